#!/bin/sh
# Builds flat.wasm from flat.c with clang (14 or later) and wasm-ld: a
# freestanding wasm32 module, no libc, no imports. The built module is
# committed (flat.wasm) so tests and benchmarks need no clang.
set -eu
cd "$(dirname "$0")"
clang --target=wasm32 -O2 -nostdlib -ffreestanding \
	-Wall -Wextra -Werror \
	-Wl,--no-entry -Wl,--strip-all \
	-o flat.wasm flat.c
