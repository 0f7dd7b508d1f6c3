"""What ingestion's worker processes run: PDF text extraction and chunking of one file's pages.

Several workers may extract one file at once: each takes the file's next page not yet taken, so they
finish together however uneven the pages are (PDFium read one 10-Q at 320 pages/s and another, of
glyph-by-glyph text, at 110). Workers import PDFium and the tokenizers library only (knowledge.base would
bring Chroma and torch: ~1 s of CPU per worker). Chunking here rather than in the main process leaves
that one free to feed the embedding model: on the H100 machine it spent ~1.8 s of a 5.6 s run cutting chunks."""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from knowledge.chunking import split_page
from knowledge.pdf import Page, PdfError, extract_pages

_tokenizer = None  # the embedding model's tokenizer, set by start()
# Shared by the workers of one ingestion (start), per file: the index of the next page to take, and the
# page count (0 until a worker has opened the file; -1 once it is refused).
_lock = _next_page = _page_count = None
MEMORY_LIMIT = 1 << 30  # bytes of address space a worker may use


def jobs_per_file(files: int, workers: int) -> int:
    """How many workers may take part in one file: every worker for a lone file, and at least 4 of many
    files, so that idle workers can join a slow one. Not all for each: every one opens the file again
    (0.01-0.9 s for a 10-Q)."""
    if workers <= 1 or files == 0:
        return 1
    return min(workers, max(4, math.ceil(workers / files)))


def start(tokenizer_json: str | None, lock, next_page, page_count) -> None:
    """Process initializer: the pages taken so far (shared arrays, one entry per file, and their lock),
    and the embedding model's own tokenizer to measure chunks with. Without one (a model with a slow
    tokenizer only), workers extract and the main process chunks."""
    global _tokenizer, _lock, _next_page, _page_count
    if multiprocessing.parent_process() is not None:  # a worker (tests call start() in their own process too)
        _exit_with_parent()
        _limit_memory()
    _lock, _next_page, _page_count = lock, next_page, page_count
    if tokenizer_json is None:
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core already
    from tokenizers import Tokenizer

    _tokenizer = Tokenizer.from_str(tokenizer_json)
    _tokenizer.no_truncation()
    _tokenizer.no_padding()


def _exit_with_parent() -> None:
    """End this worker when the process that asked for it ends. Idle workers otherwise wait on their
    queue forever once the bot or the CLI is killed during an ingestion."""
    sentinel = multiprocessing.parent_process().sentinel
    threading.Thread(target=lambda: (multiprocessing.connection.wait([sentinel]), os._exit(1)), daemon=True).start()


def _limit_memory() -> None:
    """PDFium inflates a page's compressed content whole: a 2.9 MB file of 3 GB of compressed spaces
    took 3.9 GB of memory, so a 50 MB file could exhaust the machine, times every worker reading it.
    Past the limit PDFium aborts, the worker dies, and the file is refused. Workers normally use ~60 MB."""
    try:
        import resource
    except ImportError:  # Windows
        return
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def count_tokens(texts: Sequence[str]) -> list[int]:
    """Word pieces per text, special tokens excluded (as Embedder.count_tokens)."""
    return [len(encoding.ids) for encoding in _tokenizer.encode_batch(list(texts), add_special_tokens=False)]


@dataclass(frozen=True)
class Share:
    pages: list[Page]
    pieces: list[tuple[int, str]] | None  # (page number, chunk text) in reading order; None: not chunked
    reason: str  # why the file is refused, or ""
    seconds: float


def extract_and_chunk(file: int, data: bytes, max_bytes: int, max_pages: int, max_tokens: int,
                      overlap_tokens: int) -> Share:
    """The pages of file number `file` that this worker takes, extracted and chunked."""
    started = time.perf_counter()
    with _lock:  # when other workers took every page before this job started, it need not open the file
        all_taken = _page_count[file] < 0 or 0 < _page_count[file] <= _next_page[file]
    try:
        pages = [] if all_taken else extract_pages(data, max_bytes, max_pages, functools.partial(_claim, file))
    except PdfError as e:
        with _lock:
            _page_count[file] = -1
        return Share([], [], str(e), time.perf_counter() - started)
    pieces = None if _tokenizer is None else [
        (page.number, text) for page in pages
        for text in split_page(page.text, count_tokens=count_tokens, max_tokens=max_tokens, overlap_tokens=overlap_tokens)]
    return Share(pages, pieces, "", time.perf_counter() - started)


def _claim(file: int, count: int) -> int | None:
    """The index of the file's next page for this worker, or None when none is left (or the file is refused)."""
    with _lock:
        if _page_count[file] < 0:
            return None
        _page_count[file] = count
        page = _next_page[file]
        if page >= count:
            return None
        _next_page[file] = page + 1
        return page
