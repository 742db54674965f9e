#!/bin/sh
# Builds the WebAssembly text guests into OUTDIR: wat-hello.wasm,
# wat-echo.wasm (ABI v1 handlers) and wat-cat.wasm (a plain WASI command).
#   guests/wat/build.sh OUTDIR
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
WAT2WASM=${WAT2WASM:-wat2wasm}

if ! command -v "$WAT2WASM" >/dev/null 2>&1; then
	echo "missing $WAT2WASM (wabt): apt-get install -y --no-install-recommends wabt" >&2
	exit 3
fi

mkdir -p "$out"
for name in hello echo cat; do
	"$WAT2WASM" --debug-names "$here/$name.wat" -o "$out/wat-$name.wasm"
done

echo "built $out/wat-hello.wasm $out/wat-echo.wasm $out/wat-cat.wasm"
