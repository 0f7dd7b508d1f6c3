"""Questions embedded on the GPU by replaying CUDA graphs of the embedding model.

A question is a few dozen word pieces, so the GPU finishes each of the model's ~100 kernels long before
Python has launched the next. On an H200 (2026-12-04, all-MiniLM-L6-v2 in float16, the 198 questions
of the 10-Q set and three odd ones) a question took a median 5.97 ms through sentence-transformers'
encode and 0.93 ms replayed from a graph, the vectors agreeing to a cosine of 0.99976 at least. A graph
replays fixed shapes, so questions are padded up to a bucket (batch 1, 2, 4, 8 or 16; 16, 32, 64 ...
word pieces): the attention mask keeps the padding out of the vector. Each shape is captured the first
time it is needed (~7 ms; the first capture of a process ~45 ms), or at start for the usual questions.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

MAX_BATCH = 16  # more questions at once than this go through the model's own encode
_SHORTEST = 16


def _bucket(n: int, smallest: int) -> int:
    size = smallest
    while size < n:
        size *= 2
    return size


class _Graph:
    """One captured shape: the input tensors it reads (kept alive here: a graph reads their memory, and
    a tensor freed after the capture would hand that memory to someone else) and the vectors it writes."""

    def __init__(self, model, batch: int, length: int, feature_names: list[str]):
        import torch

        self.inputs = {name: torch.zeros(batch, length, dtype=torch.long, device=model.device)
                       for name in feature_names}

        def forward():
            vectors = model(dict(self.inputs))["sentence_embedding"]
            return torch.nn.functional.normalize(vectors.float(), dim=-1)

        self.inputs["attention_mask"].fill_(1)
        side = torch.cuda.Stream(model.device)  # warm-up runs before a capture, as PyTorch asks
        side.wait_stream(torch.cuda.current_stream(model.device))
        with torch.inference_mode():
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward()
            torch.cuda.current_stream(model.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: ingestion may embed on another thread meanwhile, outside this capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.vectors = forward()

    def run(self, features: dict) -> np.ndarray:
        rows, length = features["input_ids"].shape
        for name, static in self.inputs.items():
            static.zero_()
            static[:rows, :length].copy_(features[name])
        self.graph.replay()
        return self.vectors[:rows].cpu().numpy()


class QuestionGraphs:
    """encode(texts) for up to MAX_BATCH texts of a sentence-transformers model on a CUDA device, from
    graphs; None from encode() means "use the model's own encode" (too many texts, or a model whose
    forward pass cannot be captured, which is then logged once and never tried again)."""

    def __init__(self, model):
        self._model = model
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._lock = threading.Lock()
        self._broken = False

    def capture(self, lengths: tuple[int, ...] = (16, 32, 64)) -> None:
        """Capture the graphs of single questions of these lengths now, so that the first questions
        asked (most are under 64 word pieces) wait for none."""
        names = list(self._features(["warm up"]))
        with self._lock:
            for length in lengths:
                self._graph((1, self._padded(length)), names)

    def encode(self, texts: list[str]) -> np.ndarray | None:
        if self._broken or len(texts) > MAX_BATCH:
            return None
        features = self._features(texts)
        rows, length = features["input_ids"].shape
        with self._lock:
            graph = self._graph((_bucket(rows, 1), self._padded(length)), list(features))
            return graph.run(features) if graph else None

    def _padded(self, length: int) -> int:
        """The graph length for texts of `length` word pieces: tokenizing cut them at max_seq_length,
        which padding must not pass either."""
        return min(_bucket(length, _SHORTEST), self._model.max_seq_length or length)

    def _features(self, texts: list[str]) -> dict:
        prepare = getattr(self._model, "preprocess", None) or self._model.tokenize  # renamed in sentence-transformers 6
        features = prepare(texts)
        return {name: value for name, value in features.items() if getattr(value, "ndim", 0) == 2}

    def _graph(self, shape: tuple[int, int], names: list[str]) -> _Graph | None:
        """The graph of this shape, captured if need be; None once capturing has failed."""
        if shape not in self._graphs and not self._broken:
            try:
                self._graphs[shape] = _Graph(self._model, *shape, names)
            except Exception:
                self._broken = True
                log.warning("questions cannot be embedded from CUDA graphs; using the model's own encode",
                            exc_info=True)
        return self._graphs.get(shape)
