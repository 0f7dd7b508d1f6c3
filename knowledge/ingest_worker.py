"""What ingestion's worker processes run: pypdf extraction and chunking of a share of one file's pages.

Workers import pypdf and the tokenizers library only (knowledge.base would bring Chroma and torch:
~1 s of CPU per worker). Chunking here rather than in the main process leaves that one free to feed
the embedding model: on the H100 machine it spent ~1.8 s of a 5.6 s run cutting chunks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

from knowledge.chunking import split_page
from knowledge.pdf import Page, PdfError, extract_pages

_tokenizer = None  # the embedding model's tokenizer, set by start()


def start(tokenizer_json: str | None) -> None:
    """Process initializer: chunks are measured with the embedding model's own tokenizer. Without one
    (a model with a slow tokenizer only), workers extract and the main process chunks."""
    global _tokenizer
    if tokenizer_json is None:
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core already
    from tokenizers import Tokenizer

    _tokenizer = Tokenizer.from_str(tokenizer_json)
    _tokenizer.no_truncation()
    _tokenizer.no_padding()


def count_tokens(texts: Sequence[str]) -> list[int]:
    """Word pieces per text, special tokens excluded (as Embedder.count_tokens)."""
    return [len(encoding.ids) for encoding in _tokenizer.encode_batch(list(texts), add_special_tokens=False)]


@dataclass(frozen=True)
class Share:
    pages: list[Page]
    pieces: list[tuple[int, str]] | None  # (page number, chunk text) in reading order; None: not chunked
    reason: str  # why the file is refused, or ""
    seconds: float


def extract_and_chunk(data: bytes, max_bytes: int, max_pages: int, share: int, shares: int,
                      max_tokens: int, overlap_tokens: int) -> Share:
    started = time.perf_counter()
    try:
        pages = extract_pages(data, max_bytes, max_pages, share, shares)
    except PdfError as e:
        return Share([], [], str(e), time.perf_counter() - started)
    pieces = None if _tokenizer is None else [
        (page.number, text) for page in pages
        for text in split_page(page.text, count_tokens=count_tokens, max_tokens=max_tokens, overlap_tokens=overlap_tokens)]
    return Share(pages, pieces, "", time.perf_counter() - started)
