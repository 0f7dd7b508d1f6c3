#!/usr/bin/env bash
# GPU benchmark on a machine with an NVIDIA GPU, CUDA (nvcc), cmake, ninja and Python 3 with torch,
# numpy, jinja2, transformers, sentence-transformers and scikit-build-core -- and no package registry:
# everything else comes from DIST_DIR. Prints ONE table: raw llama.cpp (llama-bench, llama-server)
# beside this project's engine, same build, same run, with the date and the GPU's name.
#
#   bash benchmarks/gpu_bench.sh DIST_DIR [--build-only | options of gpu_bench.py, e.g. --only raw,server]
#
# DIST_DIR holds (prepare it on a machine with PyPI, see below):
#   llama_cpp_python-0.3.36.tar.gz   the sdist (or a trimmed llama-src.tar.xz of the same tree: without
#                                    vendor/llama.cpp/{docs,media,benches} and the models/*.gguf other
#                                    than ggml-vocab-llama-bpe.gguf, it fits a 64 MiB upload)
#     or llama-cuda-build.tar.xz     llama.cpp built for CUDA off the GPU machine by build_cuda_kit.sh
#                                    (saves the build's ~290 s of device time)
#   *.whl                            gguf, diskcache (pure Python), pypdfium2; for the ingestion row,
#                                    chromadb and those of its dependencies the machine lacks
#   minilm/ (optional)               all-MiniLM-L6-v2's config + tokenizer files; without
#                                    model.safetensors, same-shape weights are made up (speed only)
#   pdfs/ (optional)                 PDFs for the ingestion row
# Prepare it:
#   pip download --no-deps --no-binary=:all: llama-cpp-python==0.3.36 -d DIST_DIR
#   pip download --no-deps gguf diskcache pypdfium2 -d DIST_DIR
#   pip download chromadb -d DIST_DIR   (then drop the wheels the GPU machine already has)
#
# The second questions retrieving from the product's store (gpu_bench.py --store-data): chromadb's wheels and the
# filings do not fit one upload beside llama.cpp's source, so a second call on the same warm machine brings
# them (STORE_KIT/wheels: `pip download chromadb` less numpy, onnxruntime, kubernetes, uvloop, hf_xet,
# huggingface_hub and tokenizers, which chromadb runs without or the machine has; STORE_KIT/data: the
# filings as query_latency.py's --data wants them) and runs
#   python3 -m pip install -q --no-index --no-deps --target /tmp/store-site STORE_KIT/wheels/*.whl
#   bash benchmarks/gpu_bench.sh STORE_KIT --only server,local --store-data STORE_KIT/data --store-site /tmp/store-site
# (the build, packages and model of the first call are reused).
#
# Work files (build, Python packages, the 4.92 GB synthetic model) go to $GPU_BENCH_WORK
# (default /tmp/gpubench); a second run reuses them. --build-only stops after building and writing
# the model. Building llama.cpp here takes about 5.5 minutes on 16 cores.
set -euo pipefail
DIST=$(realpath "${1:?usage: gpu_bench.sh DIST_DIR [--build-only]}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_BENCH_WORK:-/tmp/gpubench}
mkdir -p "$WORK"
SRC=$WORK/src BUILD=$WORK/build SITE=$WORK/site MODEL=$WORK/synth-llama3-8b-q4km.gguf
# shellcheck source=benchmarks/llama_source.sh
. "$REPO/benchmarks/llama_source.sh"

# A build made off this machine by build_cuda_kit.sh: build/bin, the llama_cpp package, the vocabulary.
if [ ! -d "$BUILD" ] && [ -f "$DIST/llama-cuda-build.tar.xz" ]; then tar xJf "$DIST/llama-cuda-build.tar.xz" -C "$WORK"; fi
if [ -f "$BUILD/kit.txt" ]; then
  VOCAB=$BUILD/ggml-vocab-llama-bpe.gguf
  CUDA_LIB=${CUDA_HOME:-/usr/local/cuda}/lib64  # this machine's cudart and cuBLAS
else
  [ -f "$SRC/pyproject.toml" ] || unpack_llama_source "$DIST" "$SRC" "$REPO"
  VOCAB=$SRC/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf
  CUDA_LIB=
  [ -x "$BUILD/bin/llama-server" ] || build_llama "$SRC" "$BUILD"
fi

if [ ! -d "$SITE/llama_cpp" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$DIST"/*.whl
  if [ -f "$BUILD/kit.txt" ]; then
    cp -r "$BUILD/llama_cpp" "$SITE/"
  else
    # The Python package on the library built above (no second compile).
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-index --no-deps \
      --no-build-isolation --target "$SITE" "$SRC"
  fi
fi
export PYTHONPATH=$SITE:$REPO LLAMA_CPP_LIB_PATH=$BUILD/bin LD_LIBRARY_PATH=$BUILD/bin${CUDA_LIB:+:$CUDA_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ ! -f "$MODEL" ]; then
  python3 "$REPO/benchmarks/make_synth_llama3.py" "$VOCAB" "$MODEL.part"
  mv "$MODEL.part" "$MODEL"
fi
[ "${2:-}" = "--build-only" ] && { echo "built: $BUILD/bin, model: $MODEL"; exit 0; }

extra=()
[ -d "$DIST/pdfs" ] && extra+=(--pdfs "$DIST/pdfs")
[ -d "$DIST/minilm" ] && [ ! -d "$WORK/minilm" ] && cp -r "$DIST/minilm" "$WORK/minilm"
[ -d "$WORK/minilm" ] && extra+=(--embedder "$WORK/minilm")  # kept for a second call without DIST_DIR
PYTHONUNBUFFERED=1 python3 "$REPO/benchmarks/gpu_bench.py" --model "$MODEL" --bin "$BUILD/bin" "${extra[@]}" "${@:2}"
