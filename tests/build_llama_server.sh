#!/usr/bin/env bash
# Builds llama.cpp's llama-server for the CPU, for the tests of the server backend (tests/test_llama_server.py):
# the llama.cpp vendored in the llama-cpp-python release the Dockerfile pins, with patches/ applied, as the
# image builds it (there with CUDA). Needs pip and the package registry (the release's source), a C++
# compiler (CMake and Ninja come from pip if missing); about 6 minutes on 2 cores.
#   bash tests/build_llama_server.sh     ->  build/llama-server/bin/llama-server (where the tests look)
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/llama-server
if [ -x "$out/bin/llama-server" ]; then echo "$out/bin/llama-server is there"; exit 0; fi
version=$(sed -n 's/^ARG LLAMA_CPP_PYTHON_VERSION=//p' Dockerfile)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download -q --no-deps --no-binary=:all: "llama-cpp-python==$version" -d "$work"
mkdir "$work/src"
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work/src" --strip-components=1
for p in patches/*.patch; do patch -s -p1 -d "$work/src/vendor/llama.cpp" < "$p"; done
command -v cmake >/dev/null && command -v ninja >/dev/null || pip install -q cmake ninja
cmake -S "$work/src/vendor/llama.cpp" -B "$work/build" -G Ninja -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" -j"$(nproc)" --target llama-server >/dev/null
mkdir -p "$out/bin" && cp "$work/build/bin/llama-server" "$out/bin/"
echo "built $out/bin/llama-server (llama.cpp of llama-cpp-python $version, patches/ applied)"
