#!/bin/sh
# Builds the Rust wcluster guests into OUTDIR:
#   rust-hello.wasm  (ABI v1 reactor, HTTP hello)
#   rust-echo.wasm   (ABI v1 reactor, raw echo)
#   rust-kv.wasm     (ABI v1 reactor, HTTP key-value API on the store)
#   rust-cat.wasm    (plain WASI command, stdin -> stdout)
#   rust-httpwasm.wasm (http-wasm handler, on the httpwasm SDK crate)
# Uses Debian's rustc/cargo by full path (rustup's cannot target wasm here),
# target wasm32-wasi, offline; the flags are in Cargo.toml [profile.release]:
# opt-level "s", lto, panic=abort, strip, codegen-units 1.
# Exit 3 when the toolchain is missing, 2 on usage error.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)

RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
install="apt-get install -y --no-install-recommends rustc cargo libstd-rust-dev-wasm32"

for tool in "$RUSTC" "$CARGO"; do
	if [ ! -x "$tool" ]; then
		echo "rust guests: $tool not found; install with: $install" >&2
		exit 3
	fi
done
sysroot=$("$RUSTC" --print sysroot)
if ! ls "$sysroot"/lib/rustlib/wasm32-wasi/lib/libstd-*.rlib >/dev/null 2>&1; then
	echo "rust guests: wasm32-wasi std ($sysroot/lib/rustlib/wasm32-wasi) not found; install with: $install" >&2
	exit 3
fi

# The workspace's own target dir, whatever the environment says.
target="$here/target"
(cd "$here" && RUSTC="$RUSTC" CARGO_TARGET_DIR="$target" \
	"$CARGO" build --offline --release --target wasm32-wasi --quiet \
	-p rust-hello -p rust-echo -p rust-kv -p rust-cat -p rust-httpwasm)

mkdir -p "$out"
rel="$target/wasm32-wasi/release"
cp "$rel/rust_hello.wasm" "$out/rust-hello.wasm"
cp "$rel/rust_echo.wasm" "$out/rust-echo.wasm"
cp "$rel/rust_kv.wasm" "$out/rust-kv.wasm"
cp "$rel/rust-cat.wasm" "$out/rust-cat.wasm"
cp "$rel/rust_httpwasm.wasm" "$out/rust-httpwasm.wasm"
