#!/usr/bin/env bash
# Builds the AssemblyScript guests into OUTDIR: as-hello.wasm, as-echo.wasm and
# as-kv.wasm (ABI v1 reactors) and as-cat.wasm (a plain WASI command).
# Installs the pinned npm packages (package-lock.json) when they are missing.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

for tool in node npm; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "build.sh: $tool not found: install Node.js 18+ and npm (apt-get install -y nodejs npm)" >&2
		exit 3
	fi
done

cd "$here"
asc_version=0.28.20
installed=$(node -p "require('./node_modules/assemblyscript/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$asc_version" ] || [ ! -f node_modules/@assemblyscript/wasi-shim/asconfig.json ]; then
	echo "build.sh: installing assemblyscript@$asc_version and @assemblyscript/wasi-shim (npm ci)" >&2
	if [ -f package-lock.json ]; then
		npm ci --no-audit --no-fund >&2
	else
		npm install --no-audit --no-fund >&2
	fi
fi

asc=(node node_modules/assemblyscript/bin/asc.js)
shim=node_modules/@assemblyscript/wasi-shim

# Reactors: the wasi-shim's settings spelled out (its asconfig.json would set
# exportStart to _start), except two from the SDK: abort logs through
# wcluster's log and traps (the shim's prints to stderr and calls proc_exit),
# and console writes to the worker's log with its level (the shim's writes to
# stdout and stderr, which wcluster logs at info and warn whatever the level).
reactor=(
	--lib "$shim/assembly"
	--use ASC_WASI=1
	--use abort=sdk/wcluster/onAbort
	--use trace=wasi_trace
	--use seed=wasi_seed
	--use console=sdk/wcluster/logConsole
	--use crypto=wasi_crypto
	--use performance=wasi_performance
	--use process=wasi_process
	--use Date=wasi_Date
	--exportStart _initialize
	-O3
)
"${asc[@]}" hello/main.ts "${reactor[@]}" -o "$out/as-hello.wasm"
"${asc[@]}" echo/main.ts "${reactor[@]}" -o "$out/as-echo.wasm"
"${asc[@]}" kv/main.ts "${reactor[@]}" -o "$out/as-kv.wasm"

# The command: the wasi-shim as it comes (exports _start).
"${asc[@]}" cat/main.ts --config "$shim/asconfig.json" -O3 -o "$out/as-cat.wasm"

echo "build.sh: wrote $out/as-hello.wasm $out/as-echo.wasm $out/as-kv.wasm $out/as-cat.wasm" >&2
