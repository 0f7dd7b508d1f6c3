"""Finding the GGUF file: a configured path, or a one-time download into models/; checked before loading."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from bot.config import ModelConfig

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# llama.cpp needs room beyond the weights: KV cache, compute buffers, the rest of the process.
_HEADROOM = 1.1


class ModelFileError(RuntimeError):
    """The model file is missing, cannot be downloaded, is not a GGUF, or does not fit in memory."""


def model_path(config: ModelConfig) -> Path:
    """The GGUF to load: model.path if set, else models_dir/file, downloaded on first use."""
    if config.path:
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise ModelFileError(f"model.path {path} does not exist; fix model.path or leave it empty to download "
                                 f"{config.file} from {config.repo}")
        return path
    path = config.models_dir / config.file
    if path.is_file():
        return path
    manual = (f"download {config.file} from https://huggingface.co/{config.repo} and put it at {path.resolve()} "
              f"(or set model.path to a GGUF file you already have)")
    if not config.download:
        raise ModelFileError(f"no model at {path} and model.download = false: {manual}")
    log.info("downloading %s from %s into %s (once; about 5 GB for the default model)", config.file, config.repo,
             config.models_dir)
    try:
        from huggingface_hub import hf_hub_download

        # huggingface_hub shows a tqdm progress bar and resumes an interrupted download.
        return Path(hf_hub_download(config.repo, config.file, local_dir=config.models_dir))
    except Exception as e:  # offline, unknown repo or file, disk full: all end the same way for the user
        raise ModelFileError(f"could not download the model ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                             f"{manual}") from None


def check_model_file(path: Path, n_gpu_layers: int) -> bool:
    """Refuse a file that is not a GGUF, or larger than the memory it would be loaded into; True when
    that memory is a GPU's."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); "
                             f"llama.cpp needs a .gguf file")
    size = path.stat().st_size
    gpu_free = free_gpu_bytes() if n_gpu_layers != 0 else None
    where, free = ("GPU memory", gpu_free) if gpu_free is not None else ("RAM", available_ram_bytes())
    if free is not None and size * _HEADROOM > free:
        raise ModelFileError(f"{path.name} is {size / 1e9:.1f} GB but only {free / 1e9:.1f} GB of {where} is free; "
                             f"use a smaller quantization, free memory, or lower model.n_gpu_layers")
    return gpu_free is not None


def proc_kib(path: str, key: str) -> int:
    """A "Key: N kB" figure of a Linux /proc file (/proc/meminfo, /proc/self/status); 0 if absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def available_ram_bytes() -> int | None:
    if available := proc_kib("/proc/meminfo", "MemAvailable"):
        return available * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_gpu_bytes() -> int | None:
    """Free memory of the first CUDA GPU, or None without one (then the model loads into RAM).

    Asks nvidia-smi rather than importing torch: torch's CUDA libraries loaded after llama.cpp's CUDA
    build in the same process crashed it (segmentation fault) on an H100 with CUDA 13.
    """
    if "torch" in sys.modules:  # already loaded: asking it is safe and cheap
        try:
            torch = sys.modules["torch"]
            if torch.cuda.is_available():
                return torch.cuda.mem_get_info()[0]
        except Exception:
            pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return int(float(out.stdout.split()[0])) * 2**20
    except (OSError, ValueError, subprocess.TimeoutExpired):  # no NVIDIA driver: no GPU
        pass
    return None
