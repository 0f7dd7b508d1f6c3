"""The knowledge base of every server: add, list, remove PDFs and search them.

All methods are blocking (PDF reading, embeddings, SQLite, Chroma); async callers run them with
asyncio.to_thread so the event loop stays free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from knowledge import ingest_worker, retrieval
from knowledge.chunking import chunk_pages, number_chunks
from knowledge.embeddings import Embedder
from knowledge.pdf import Page, PdfError, check_pdf_bytes, join_shares, too_large_reason
from knowledge.store import Document, GuildStore, chroma_client

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (file, pages embedded so far, pages in the file)

_PROFILE_WORDS = 120  # words of the first page that, with the file name, say what a document is
_CANDIDATES = 60  # passages taken from each of vector and word search before fusing
_WORKER_DIED = (f"the PDF reader crashed on this file or needed over {ingest_worker.MEMORY_LIMIT >> 30} GB "
                "of memory for it; nothing was stored for it")


@dataclass(frozen=True)
class IngestResult:
    file: str
    status: str  # "added", "replaced", "unchanged" or "refused"
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    reason: str = ""
    timings: dict[str, float] | None = None  # extract / embed / store seconds


@dataclass(frozen=True)
class Passage:
    file: str
    page: int
    score: float
    text: str
    chunk_id: str


def _worker_processes() -> multiprocessing.context.BaseContext:
    """How ingestion starts its workers. Never by forking this process, which holds torch's and Chroma's
    threads. Where it exists (Linux, macOS), forkserver: workers are forked from a small server that
    imported the PDF reader once, where spawn starts a new interpreter for each, one after the other.
    13 filings on the H100 machine (15 workers): 11-12 s with spawn, 5.4-6.5 s with forkserver.
    Either way each worker imports the main module again (multiprocessing does): keep it light."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["knowledge.ingest_worker"])
    return context


class KnowledgeBase:
    def __init__(self, config, embedder: Embedder | None = None):
        """`config` is the whole Config (data dir + [knowledge] section)."""
        self.config = config.knowledge
        self._data_dir = config.knowledge_dir
        self._client = chroma_client(config.chroma_dir, self.config.chroma_url)
        self.embedder = embedder or Embedder(self.config.embedding_model, self.config.embedding_device,
                                             self.config.embedding_batch_size)
        self._stores: dict[str, GuildStore] = {}
        self._routers: dict[str, tuple[tuple, retrieval.DocumentRouter]] = {}
        self._lock = threading.Lock()
        self._word_search = ThreadPoolExecutor(4, thread_name_prefix="word-search")

    def store(self, guild: str) -> GuildStore:
        guild = str(guild)
        with self._lock:
            if guild not in self._stores:
                self._stores[guild] = GuildStore(guild, self._client, self._data_dir)
            return self._stores[guild]

    @property
    def max_bytes(self) -> int:
        return int(self.config.max_file_mb * 1e6)

    # --- adding ----------------------------------------------------------------------------

    def ingest(self, guild: str, name: str, data: bytes, progress: Progress | None = None) -> IngestResult:
        """Add one PDF. Never raises for a bad file: the result says why it was refused."""
        [result] = self._ingest(guild, [(Path(name).name, data)], progress)
        return result

    def ingest_paths(self, guild: str, paths: list[Path], progress: Progress | None = None) -> Iterator[IngestResult]:
        """Add many PDFs; yields one result per file, in order."""
        items: list[IngestResult | tuple[str, bytes]] = []
        for path in paths:
            if not path.is_file():
                items.append(IngestResult(path.name, "refused", reason="no such file"))
            elif (size := path.stat().st_size) > self.max_bytes:  # refused before reading it into memory
                items.append(IngestResult(path.name, "refused", reason=too_large_reason(size, self.max_bytes)))
            else:
                items.append((path.name, path.read_bytes()))
        return self._ingest(guild, items, progress)

    def _ingest(self, guild: str, items: list[IngestResult | tuple[str, bytes]],
                progress: Progress | None) -> Iterator[IngestResult]:
        """Extract and chunk text in worker processes while this one embeds and stores.

        Workers keep PDFium (native code reading untrusted files) out of the bot's process: a file that
        crashes it or needs more memory than ingest_worker.MEMORY_LIMIT kills a worker, and the file is
        refused. Text extraction runs in parallel with embedding instead of before it; on machines with
        the cores for it, several workers extract a file at once, each taking its next page not yet
        taken; once every file is extracted, embedding takes the workers' cores too.
        """
        todo: list[IngestResult | tuple[str, bytes, str]] = []  # a result already, or (name, data, sha256)
        for item in items:
            if isinstance(item, IngestResult):
                todo.append(item)
                continue
            name, data = item
            try:
                check_pdf_bytes(data, self.max_bytes)  # empty, too large, not a PDF: no worker needed
            except PdfError as e:
                todo.append(IngestResult(name, "refused", reason=str(e)))
                continue
            sha = hashlib.sha256(data).hexdigest()
            old = self.store(guild).document(name)
            if old is not None and old.sha256 == sha:
                todo.append(IngestResult(name, "unchanged", old.pages, old.chunks))
            else:
                todo.append((name, data, sha))
        files = [item for item in todo if not isinstance(item, IngestResult)]
        if not files:
            yield from todo
            return
        workers = max(1, (os.cpu_count() or 2) - 1)
        per_file = ingest_worker.jobs_per_file(len(files), workers)
        with self._extraction_pool(len(files), min(workers, len(files) * per_file)) as pool:
            # A file's jobs are queued together, so files finish in order; a job that starts after the
            # others took every page of its file returns at once.
            jobs = [[self._extract(pool, f, data) for _ in range(per_file)] for f, (_, data, _) in enumerate(files)]

            def cores_free() -> bool:
                return all(job.done() for file_jobs in jobs for job in file_jobs)

            file_jobs = iter(jobs)
            for item in todo:
                if isinstance(item, IngestResult):
                    yield item
                    continue
                name, data, sha = item
                try:
                    done: list[ingest_worker.Share] = [job.result() for job in next(file_jobs)]
                except BrokenProcessPool:  # a worker died, maybe on another file: read this one alone
                    log.warning("a PDF worker died; reading %s again on its own", name)
                    if (alone := self._extract_alone(data)) is None:
                        yield IngestResult(name, "refused", reason=_WORKER_DIED)
                        continue
                    done = [alone]
                seconds = [share.seconds for share in done]
                try:
                    if reason := next((share.reason for share in done if share.reason), ""):
                        raise PdfError(reason)
                    pages = join_shares([share.pages for share in done])
                except PdfError as e:
                    yield IngestResult(name, "refused", reason=str(e), seconds=max(seconds))
                    continue
                # Workers took the pages in turns; a stable sort by page puts the chunks back in order.
                pieces = None if done[0].pieces is None else sorted(
                    (piece for share in done for piece in share.pieces), key=lambda piece: piece[0])
                result = self._add_pages(guild, name, sha, len(data), pages, progress, cores_free=cores_free,
                                         pieces=pieces)
                # The file's own time: its slowest worker, then embedding and storing (not the wait before:
                # that is other files' work). extract: work in the workers, chunking included.
                timings = dict(result.timings, extract=sum(seconds))
                result = dataclasses.replace(result, seconds=result.seconds + max(seconds), timings=timings)
                log.info("guild %s: %s %s, %d pages, %d chunks in %.1fs", guild, result.status, name,
                         result.pages, result.chunks, result.seconds)
                yield result

    def _extraction_pool(self, files: int, workers: int) -> ProcessPoolExecutor:
        context = _worker_processes()
        taken = (context.Lock(), context.RawArray("q", files), context.RawArray("q", files))
        return ProcessPoolExecutor(workers, mp_context=context, initializer=ingest_worker.start,
                                   initargs=(self.embedder.tokenizer_json(), *taken))

    def _extract(self, pool: ProcessPoolExecutor, file: int, data: bytes) -> Future[ingest_worker.Share]:
        return pool.submit(ingest_worker.extract_and_chunk, file, data, self.max_bytes, self.config.max_pages,
                           self.config.chunk_tokens, self.config.chunk_overlap_tokens)

    def _extract_alone(self, data: bytes) -> ingest_worker.Share | None:
        """A file read in a worker of its own, after a worker died: None if this one dies too."""
        with self._extraction_pool(1, 1) as pool:
            try:
                return self._extract(pool, 0, data).result()
            except BrokenProcessPool:
                return None

    def _add_pages(self, guild: str, name: str, sha: str, size: int, pages: list[Page],
                   progress: Progress | None = None, cores_free: Callable[[], bool] = lambda: False,
                   pieces: list[tuple[int, str]] | None = None) -> IngestResult:
        """Chunk (unless workers did: pieces, as (page number, text)), embed and store pages already
        extracted. cores_free() says whether embedding may use every core (nothing else of ours is busy)."""
        started = time.perf_counter()
        store = self.store(guild)
        replaced = store.document(name) is not None
        doc_id = hashlib.sha256(f"{name}\0{sha}".encode()).hexdigest()[:20]
        if pieces is None:
            chunks = chunk_pages(pages, doc_id=doc_id, file=name, count_tokens=self.embedder.count_tokens,
                                 max_tokens=self.config.chunk_tokens, overlap_tokens=self.config.chunk_overlap_tokens)
        else:
            chunks = number_chunks(pieces, doc_id=doc_id, file=name)
        label = retrieval.doc_label(name)
        # The file name travels with every passage: "2023 Q3 AAPL" says which report a table is from.
        search_texts = [f"{label}\n{c.text}" for c in chunks]
        embeddings = self._embed(search_texts, [c.page for c in chunks], name, len(pages), progress, cores_free)
        embedded = time.perf_counter()
        profile = f"{label}\n" + " ".join(pages[0].text.split()[:_PROFILE_WORDS])
        store.add_document(name, sha, size, len(pages), profile, chunks, search_texts, embeddings)
        done = time.perf_counter()
        timings = {"embed": embedded - started, "store": done - embedded}
        return IngestResult(name, "replaced" if replaced else "added", len(pages), len(chunks), done - started,
                            timings=timings)

    def _embed(self, texts: list[str], page_of: list[int], name: str, n_pages: int,
               progress: Progress | None, cores_free: Callable[[], bool]) -> np.ndarray:
        if progress:
            progress(name, 0, n_pages)
        # Two batches a call: cores_free() is asked again soon after text extraction ends, and the
        # progress display moves every few pages.
        step = self.embedder.batch_size * 2
        parts = []
        for i in range(0, len(texts), step):
            parts.append(self.embedder.encode(texts[i:i + step], all_cores=cores_free()))
            if progress:
                end = min(i + step, len(texts))
                progress(name, n_pages if end == len(texts) else page_of[end - 1], n_pages)
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dimension), dtype=np.float32)

    # --- listing and removing --------------------------------------------------------------

    def documents(self, guild: str) -> list[Document]:
        return self.store(guild).documents()

    def guilds_with_documents(self) -> list[str]:
        """The guilds of this data dir that hold at least one document (stores are opened, not made)."""
        known = sorted(p.stem for p in self._data_dir.glob("*.sqlite3"))
        return [guild for guild in known if self.store(guild).documents()]

    def remove(self, guild: str, name: str) -> Document | None:
        return self.store(guild).remove_document(name)

    def existing_chunks(self, guild: str, chunk_ids: list[str]) -> set[str]:
        """Those of the chunk ids still in the guild's knowledge base."""
        return set(self.store(guild).chunks(chunk_ids))

    # --- searching -------------------------------------------------------------------------

    def search(self, guild: str, question: str, k: int | None = None) -> list[Passage]:
        """The top-k passages of this guild's documents for the question, best first."""
        k = k or self.config.top_k
        store = self.store(guild)
        if not question.strip() or store.chunk_count() == 0:
            return []
        # Word search (SQLite) runs beside embedding + vector search (torch, Chroma): all three
        # release the GIL, so a question costs the slower of the two paths, not their sum.
        lexical = self._word_search.submit(store.lexical_search, retrieval.query_terms(question), _CANDIDATES)
        vector_hits = store.vector_search(self.embedder.encode_question(question), _CANDIDATES)
        lexical_hits = lexical.result()
        stored = store.chunks(retrieval.unique(cid for cid, _ in [*vector_hits, *lexical_hits]))
        vector_hits = [hit for hit in vector_hits if hit[0] in stored]  # vectors of uncommitted documents out
        doc_of = {cid: c.doc_id for cid, c in stored.items()}
        doc_scores = self._router(store).scores(question)
        ranked = retrieval.fuse(vector_hits, lexical_hits, doc_of, doc_scores, retrieval.DOC_WEIGHT)
        return [Passage(stored[c.chunk_id].file, stored[c.chunk_id].page, round(c.score, 4),
                        stored[c.chunk_id].text, c.chunk_id) for c in ranked[:k]]

    def _router(self, store: GuildStore) -> retrieval.DocumentRouter:
        docs = store.documents()
        key = tuple(d.doc_id for d in docs)
        cached = self._routers.get(store.guild)
        if cached is None or cached[0] != key:
            parts = {d.doc_id: d.profile.partition("\n")[::2] for d in docs}  # (file label, first page)
            cached = (key, retrieval.DocumentRouter(
                {doc_id: retrieval.naming_terms(label, page) for doc_id, (label, page) in parts.items()},
                {doc_id: retrieval.document_period(label, page) for doc_id, (label, page) in parts.items()},
                store.documents_holding,
            ))
            self._routers[store.guild] = cached
        return cached[1]
