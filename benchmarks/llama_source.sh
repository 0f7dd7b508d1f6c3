# Sourced by gpu_bench.sh and build_cuda_kit.sh: llama.cpp's source and build, as the Dockerfile makes them.

CUDA_ARCHS=${CUDA_ARCHS:-90}  # 90: H100/H200; the Dockerfile builds for several

# The same llama.cpp flags as the Dockerfile (tests/test_docker.py checks they agree).
LLAMA_CMAKE_FLAGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release"

# unpack_llama_source DIST_DIR SRC_DIR REPO: the llama-cpp-python sdist (or a trimmed llama-src.tar.*)
# from DIST_DIR into SRC_DIR, with the repository's patches/ applied as in the Dockerfile:
# GGML_CUDA_MMQ_MAX_BATCH (prompt prefill on cuBLAS, decoding on MMQ) and LLAMA_SERVER_GRAPH_TOP_K
# (llama-server picks each token's candidates in the graph).
unpack_llama_source() {
  local dist=$1 src=$2 repo=$3 archive= f p
  for f in "$dist"/llama_cpp_python-*.tar.gz "$dist"/llama-src.tar.*; do [ -f "$f" ] && archive=$f && break; done
  [ -n "$archive" ] || { echo "no llama-cpp-python sdist in $dist" >&2; return 1; }
  mkdir -p "$src"
  tar xf "$archive" -C "$src" --strip-components=1
  for p in "$repo"/patches/*.patch; do patch -p1 -d "$src/vendor/llama.cpp" < "$p" >/dev/null || return 1; done
}

# build_llama SRC_DIR BUILD_DIR [more cmake options...]: llama-bench and llama-server for $CUDA_ARCHS,
# with cmake's and the build's output in BUILD_DIR's parent (cmake.log, build.log).
build_llama() {
  local src=$1 build=$2 logs
  shift 2
  logs=$(dirname "$build")
  # shellcheck disable=SC2086
  cmake -S "$src/vendor/llama.cpp" -B "$build" -G Ninja $LLAMA_CMAKE_FLAGS -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" "$@" >"$logs/cmake.log"
  cmake --build "$build" -j"$(nproc)" --target llama-bench llama-server >"$logs/build.log"
}
