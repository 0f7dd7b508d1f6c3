# syntax=docker/dockerfile:1
# The Discord PDF assistant with llama.cpp on an NVIDIA GPU.
#   docker build -t pdf-assistant-bot .
#   docker run --gpus all -e DISCORD_TOKEN=... -v bot-models:/app/models -v bot-data:/app/data pdf-assistant-bot
# The model GGUF (4.9 GB) is downloaded into the models volume on the first start.
ARG CUDA_VERSION=12.6.3
ARG UBUNTU=ubuntu24.04

# --- build: llama.cpp (llama-server + shared libraries) and the Python environment --------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
# GPU generations to compile for: Turing, Ampere, Ada, Hopper. One value builds faster (90: H100/H200).
ARG CUDA_ARCHS="75;80;86;89;90"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev cmake ninja-build build-essential patch ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY patches /build/patches
# The patches add GGML_CUDA_MMQ_MAX_BATCH (set below: prompt prefill on cuBLAS, decoding on MMQ) and
# LLAMA_SERVER_GRAPH_TOP_K (the bot sets it: llama-server picks each token's candidates on the GPU).
RUN pip download --no-deps --no-binary=:all: "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d sdist \
 && mkdir llama-cpp-python \
 && tar xzf sdist/llama_cpp_python-*.tar.gz -C llama-cpp-python --strip-components=1 \
 && for p in patches/*.patch; do patch -p1 -d llama-cpp-python/vendor/llama.cpp < "$p" || exit 1; done
# The same llama.cpp flags as the GPU benchmark (benchmarks/llama_source.sh; tests/test_docker.py checks).
# GGML_NATIVE=OFF: no -march=native, so the image runs on any x86-64 CPU. The linker flag lets the
# binaries link against the CUDA driver stub here; the real libcuda comes from the host at run time.
RUN cmake -S llama-cpp-python/vendor/llama.cpp -B llama-build -G Ninja \
      -DGGML_CUDA=on -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}" -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined \
 && cmake --build llama-build -j"$(nproc)" --target llama-server \
 && mkdir -p /opt/llama/bin \
 && cp -a llama-build/bin/llama-server llama-build/bin/*.so* /opt/llama/bin/
# The Python bindings on the libraries just built (no second CUDA compile), then the bot and its
# dependencies (torch brings its own CUDA libraries for the embedder on the GPU).
RUN CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install --no-deps ./llama-cpp-python \
 && pip install typing-extensions "numpy>=1.26" diskcache "jinja2>=2.11.3"
COPY pyproject.toml README.md /build/app/
COPY bot /build/app/bot
COPY knowledge /build/app/knowledge
COPY cogs /build/app/cogs
RUN pip install /build/app

# --- run ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bot
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/llama /opt/llama
WORKDIR /app
COPY --chown=bot:bot config.example.toml /app/config.example.toml
RUN mkdir -p /app/models /app/data && chown bot:bot /app/models /app/data
# On a GPU the bot runs llama.cpp's llama-server itself (continuous batching: many channels at once).
# Embedding batches of 256 instead of 64 embedded 29% more chunks per second on an H100.
ENV PATH=/opt/venv/bin:/opt/llama/bin:$PATH \
    LLAMA_CPP_LIB_PATH=/opt/llama/bin \
    LD_LIBRARY_PATH=/opt/llama/bin \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/app/models/huggingface \
    GGML_CUDA_MMQ_MAX_BATCH=128 \
    BOT_MODEL_BACKEND=server \
    BOT_MODEL_SERVER_BINARY=/opt/llama/bin/llama-server \
    BOT_MODEL_MODELS_DIR=/app/models \
    BOT_DATA_DIR=/app/data
USER bot
VOLUME ["/app/models", "/app/data"]
# DISCORD_TOKEN comes from the environment (docker run -e / compose), never from the image.
CMD ["python", "-m", "bot", "run"]
