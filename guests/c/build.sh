#!/bin/sh
# Builds the C guests into OUTDIR: c-hello.wasm, c-echo.wasm, c-trace.wasm,
# c-kv.wasm (ABI v1 reactors), c-httpwasm.wasm (an http-wasm handler), c-cat.wasm
# and c-httpcmd.wasm (plain WASI commands).
#   guests/c/build.sh OUTDIR
# CC and WASI_SYSROOT may be overridden from the environment.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-clang}
WASI_SYSROOT=${WASI_SYSROOT:-/usr}
install="apt-get install -y --no-install-recommends clang lld wasi-libc libclang-rt-14-dev-wasm32"

if ! command -v "$CC" >/dev/null 2>&1; then
	echo "missing $CC (C compiler): $install" >&2
	exit 3
fi
if ! command -v wasm-ld >/dev/null 2>&1; then
	echo "missing wasm-ld (lld): $install" >&2
	exit 3
fi
if [ ! -f "$WASI_SYSROOT/lib/wasm32-wasi/libc.a" ] || [ ! -f "$WASI_SYSROOT/include/wasm32-wasi/stdio.h" ]; then
	echo "missing the wasi sysroot $WASI_SYSROOT/{lib,include}/wasm32-wasi (wasi-libc): $install" >&2
	exit 3
fi
# The compiler-rt package is named after clang's major version.
major=$("$CC" -dumpversion 2>/dev/null | cut -d. -f1)
if [ -n "$major" ] && [ "$major" != 14 ]; then
	install="apt-get install -y --no-install-recommends clang lld wasi-libc libclang-rt-$major-dev-wasm32"
fi
rt=$("$CC" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -print-libgcc-file-name 2>/dev/null || true)
if [ -z "$rt" ] || [ ! -f "$rt" ]; then
	echo "missing ${rt:-libclang_rt.builtins-wasm32.a} (clang wasm32 runtime): $install" >&2
	exit 3
fi

mkdir -p "$out"
cflags="--target=wasm32-wasi --sysroot=$WASI_SYSROOT -O2 -Wall -Wextra -Wl,--strip-all"

# ABI handlers: reactors (crt1-reactor.o exports _initialize).
for name in hello echo kv; do
	"$CC" $cflags -mexec-model=reactor -I "$here/sdk" \
		-o "$out/c-$name.wasm" "$here/examples/$name.c"
done
# trace keeps its name section, so that a trap's wasm stack names functions:
# linked without --strip-all, and without -O, which would run wasm-opt (it
# drops the section) after the link.
"$CC" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -O2 -Wall -Wextra -I "$here/sdk" \
	-c -o "$out/c-trace.o" "$here/examples/trace.c"
"$CC" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -mexec-model=reactor \
	-o "$out/c-trace.wasm" "$out/c-trace.o"
rm "$out/c-trace.o"
# WASI commands: _start, stdin/stdout are the connection.
"$CC" $cflags -o "$out/c-cat.wasm" "$here/examples/cat.c"
"$CC" $cflags -o "$out/c-httpcmd.wasm" "$here/examples/httpcmd.c"
# An http-wasm handler (import module http_handler): a reactor too.
"$CC" $cflags -mexec-model=reactor -I "$here/sdk" -o "$out/c-httpwasm.wasm" "$here/examples/httpwasm.c"

echo "built $out/c-hello.wasm $out/c-echo.wasm $out/c-kv.wasm $out/c-trace.wasm $out/c-httpwasm.wasm $out/c-cat.wasm $out/c-httpcmd.wasm"
