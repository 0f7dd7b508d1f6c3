"""The container files, checked without a Docker engine: the CUDA build flags agree with the GPU
benchmark's, the image runs the bot as a non-root user with models/ and data/ on volumes, and compose
reserves the GPUs."""

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _cmake_flags(text: str) -> set[str]:
    return {flag for flag in re.findall(r"-D[A-Z_]+=[^\s\"'\\]+", text) if not flag.startswith("-DCMAKE_CUDA_ARCH")}


def test_docker_builds_llama_cpp_with_the_benchmark_flags():
    bench = (ROOT / "benchmarks/gpu_bench.sh").read_text()
    source = (ROOT / "benchmarks/llama_source.sh").read_text()  # shared by gpu_bench.sh and build_cuda_kit.sh
    bench_flags = _cmake_flags(re.search(r'^LLAMA_CMAKE_FLAGS="([^"]+)"', source, re.M).group(1))
    assert {"-DGGML_CUDA=on", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON"} <= bench_flags
    kit = (ROOT / "benchmarks/build_cuda_kit.sh").read_text()
    assert "-G Ninja $LLAMA_CMAKE_FLAGS -DCMAKE_CUDA_ARCHITECTURES=" in source  # in build_llama, which both call
    assert 'build_llama "$SRC" "$BUILD"' in bench and 'build_llama "$SRC" "$BUILD"' in kit
    cmake = re.search(r"RUN cmake -S (.+?)&& cmake --build", _dockerfile(), re.S).group(1)
    docker_flags = _cmake_flags(cmake) - {"-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"}
    assert docker_flags == bench_flags
    # The Python bindings reuse those libraries rather than compiling llama.cpp a second time.
    assert 'CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install' in _dockerfile()
    assert 'CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install' in bench
    # Both apply every patch in patches/ to llama.cpp; the image switches on the one the bot does not.
    assert len(list((ROOT / "patches").glob("*.patch"))) == 2
    assert "for p in patches/*.patch; do patch -p1 -d llama-cpp-python/vendor/llama.cpp" in _dockerfile()
    assert 'for p in "$repo"/patches/*.patch; do patch -p1 -d "$src/vendor/llama.cpp"' in source
    assert "GGML_CUDA_MMQ_MAX_BATCH=128" in _dockerfile()


def test_docker_stages_user_volumes_and_command():
    lines = [line.strip() for line in _dockerfile().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and "-devel-" in stages[0] and "-runtime-" in stages[1]
    final = lines[lines.index(stages[1]):]
    user = next(line.split()[1] for line in final if line.startswith("USER "))
    assert user not in ("root", "0")
    assert any(line.startswith("VOLUME") and "/app/models" in line and "/app/data" in line for line in final)
    assert final[-1] == 'CMD ["python", "-m", "bot", "run"]'
    assert "DISCORD_TOKEN=" not in _dockerfile().replace("DISCORD_TOKEN=...", "")  # no token baked in
    env = " ".join(final)
    assert "BOT_MODEL_BACKEND=server" in env and "BOT_MODEL_SERVER_BINARY=/opt/llama/bin/llama-server" in env


def test_dockerignore_keeps_secrets_models_and_data_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", "models", "data", ".git", ".venv", "*.gguf"} <= ignored
    for needed in ("bot", "knowledge", "cogs", "pyproject.toml", "README.md", "config.example.toml"):
        assert needed not in ignored


def test_compose_reserves_gpus_and_has_an_optional_chroma_server():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    bot = compose["services"]["bot"]
    devices = bot["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert {v.split(":")[1] for v in bot["volumes"]} == {"/app/models", "/app/data"}
    assert "DISCORD_TOKEN" in bot["environment"] and "profiles" not in bot
    chroma = compose["services"]["chroma"]
    assert chroma["profiles"] == ["chroma"] and shlex.join(chroma["command"]).startswith("chroma run --path")
    assert "--host 0.0.0.0 --port 8000" in shlex.join(chroma["command"])
