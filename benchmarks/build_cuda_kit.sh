#!/usr/bin/env bash
# Builds gpu_bench.sh's llama.cpp for CUDA on a machine with no GPU, so that the GPU machine's device
# time is not spent compiling (about 290 s there; about 25 minutes on 2 cores here).
#
#   bash benchmarks/build_cuda_kit.sh SOURCE_DIR DIST_DIR
#
# Needs CUDA's nvcc, cmake, ninja, gcc, patchelf and PyPI (for cuBLAS). Takes llama.cpp's source from
# SOURCE_DIR as gpu_bench.sh takes it from its DIST_DIR (same patches, same flags) and writes
# DIST_DIR/llama-cuda-build.tar.xz (about 50 MB): build/bin (llama-bench, llama-server and their
# libraries), build/llama_cpp (the Python package), build/ggml-vocab-llama-bpe.gguf (the synthetic
# model's tokenizer) and build/kit.txt (what it was built from). With it in its DIST_DIR, gpu_bench.sh builds nothing and needs no sdist. The GPU machine supplies
# the driver (libcuda), cudart and cuBLAS of the same CUDA major version.
set -euo pipefail
SOURCE=$(realpath "${1:?usage: build_cuda_kit.sh SOURCE_DIR DIST_DIR}")
mkdir -p "${2:?usage: build_cuda_kit.sh SOURCE_DIR DIST_DIR}" && DIST=$(realpath "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${CUDA_KIT_WORK:-/tmp/cudakit}
SRC=$WORK/src BUILD=$WORK/build
# shellcheck source=benchmarks/llama_source.sh
. "$REPO/benchmarks/llama_source.sh"
command -v patchelf >/dev/null || { echo "patchelf is needed: pip install patchelf" >&2; exit 1; }
mkdir -p "$WORK"
[ -f "$SRC/pyproject.toml" ] || unpack_llama_source "$SOURCE" "$SRC" "$REPO"

# cuBLAS's headers and libraries from PyPI, for the CUDA version of nvcc.
cuda=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')
major=${cuda%%.*}
if [ "$major" -ge 13 ]; then cublas=nvidia-cublas; else cublas=nvidia-cublas-cu$major; fi
if [ ! -d "$WORK/cublas" ]; then
  python3 -m pip download -q --no-deps -d "$WORK/wheel" "$cublas==$cuda.*"
  python3 -m zipfile -e "$WORK"/wheel/*.whl "$WORK/cublas"
fi
include=$(dirname "$(find "$WORK/cublas" -name cublas_v2.h)")
lib=$(dirname "$(find "$WORK/cublas" -name "libcublas.so.*")")

# A stand-in for the driver library, which only a GPU machine has. It exports nothing, so the linker
# drops it from libggml-cuda.so; patchelf puts the real library's name back once built.
mkdir -p "$WORK/stub"
echo 'void cuda_driver_stand_in(void) {}' | gcc -shared -x c - -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so"

[ -x "$BUILD/bin/llama-server" ] || build_llama "$SRC" "$BUILD" \
  -DCMAKE_CUDA_FLAGS="-I$include" -DCMAKE_CXX_FLAGS="-I$include" \
  -DCUDA_cublas_LIBRARY="$(ls "$lib"/libcublas.so.*)" -DCUDA_cublasLt_LIBRARY="$(ls "$lib"/libcublasLt.so.*)" \
  -DCUDA_cuda_driver_LIBRARY="$WORK/stub/libcuda.so" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--allow-shlib-undefined -Wl,-rpath-link,$lib"
readelf -d "$BUILD/bin/libggml-cuda.so" | grep -q 'libcuda\.so\.1' || patchelf --add-needed libcuda.so.1 "$BUILD/bin/libggml-cuda.so"

kit=$WORK/kit
rm -rf "$kit" && mkdir -p "$kit/build"
cp -a "$BUILD/bin" "$SRC/llama_cpp" "$SRC/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf" "$kit/build/"
cat >"$kit/build/kit.txt" <<INFO
source: $(basename "$(ls "$SOURCE"/llama_cpp_python-*.tar.gz "$SOURCE"/llama-src.tar.* 2>/dev/null | head -1)") with patches/ of $(git -C "$REPO" rev-parse --short HEAD)
nvcc $cuda, $cublas from PyPI, CMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS, packed $(date -u +%Y-%m-%dT%H:%MZ)
INFO
tar cJf "$DIST/llama-cuda-build.tar.xz.part" -C "$kit" build
mv "$DIST/llama-cuda-build.tar.xz.part" "$DIST/llama-cuda-build.tar.xz"
echo "wrote $DIST/llama-cuda-build.tar.xz ($(du -h "$DIST/llama-cuda-build.tar.xz" | cut -f1))"
