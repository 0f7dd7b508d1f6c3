"""Where one server's knowledge lives: vectors in Chroma, words and the document list in SQLite.

Each guild gets its own Chroma collection and its own SQLite file, so nothing stored for one
server can be returned for another: no query ever names two guilds.

A document becomes visible in one SQLite transaction (its row in `documents` plus its words in the
full-text index). Its vectors are written to Chroma before that, under a `pending` mark committed
first; vectors whose document never committed are swept on the next open. So a crash or kill
during ingest leaves the whole document or none of it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import chromadb
import numpy as np

from knowledge.chunking import Chunk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    name TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    pages INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    added_at REAL NOT NULL,
    profile TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pending (doc_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    page INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    search_text, tokenize='porter unicode61 remove_diacritics 2'
);
"""


@dataclass(frozen=True)
class Document:
    name: str
    doc_id: str
    sha256: str
    pages: int
    chunks: int
    size_bytes: int
    added_at: float
    profile: str


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: str
    doc_id: str
    file: str
    page: int
    index: int
    text: str


def chroma_client(chroma_dir: Path, chroma_url: str):
    """Embedded Chroma under the data dir, or a Chroma server when a URL is configured."""
    if chroma_url:
        url = urlparse(chroma_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"knowledge.chroma_url {chroma_url!r} is not an http(s) URL")
        port = url.port or (443 if url.scheme == "https" else 80)
        return chromadb.HttpClient(host=url.hostname, port=port, ssl=url.scheme == "https",
                                   settings=chromadb.Settings(anonymized_telemetry=False))
    chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(chroma_dir), settings=chromadb.Settings(anonymized_telemetry=False))


class GuildStore:
    """The documents, chunks and vectors of one guild. Thread-safe; writes are serialised."""

    def __init__(self, guild: str, client, sqlite_dir: Path):
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,40}", guild):
            raise ValueError(f"guild id {guild!r} must be 1-40 letters, digits, '_' or '-'")
        self.guild = guild
        self._write_lock = threading.Lock()
        self._df_cache: dict[str, int] = {}
        self._local = threading.local()
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = sqlite_dir / f"{guild}.sqlite3"
        # embedding_function=None: we always pass our own vectors, and Chroma's default embedder
        # would try to download a model.
        self._collection = client.get_or_create_collection(
            f"kb_{guild}", embedding_function=None, metadata={"hnsw:space": "cosine"}
        )
        if (self._collection.configuration.get("hnsw") or {}).get("ef_search", _EF_SEARCH) < _EF_SEARCH:
            self._collection.modify(configuration={"hnsw": {"ef_search": _EF_SEARCH}})
        with self._db() as db:
            db.executescript(_SCHEMA)
        self._sweep_pending()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # --- reads -------------------------------------------------------------------------------

    def documents(self) -> list[Document]:
        rows = self._db().execute(f"SELECT {_DOC_COLUMNS} FROM documents ORDER BY name").fetchall()
        return [Document(*row) for row in rows]

    def document(self, name: str) -> Document | None:
        row = self._db().execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE name = ?", (name,)).fetchone()
        return Document(*row) if row else None

    def chunk_count(self) -> int:
        return self._db().execute("SELECT COALESCE(SUM(chunks), 0) FROM documents").fetchone()[0]

    def vector_search(self, embedding: np.ndarray, n: int) -> list[tuple[str, float]]:
        """(chunk_id, cosine similarity), best first. Vectors of a document not committed yet (or being
        swept) may be among them: only chunks() of committed documents, which the caller reads anyway,
        tells them apart."""
        if n <= 0:
            return []
        # No count() first: an empty collection answers with no ids, and a count cost 1.5 ms a question.
        result = self._collection.query(query_embeddings=[embedding.tolist()], n_results=n, include=["distances"])
        return [(cid, 1.0 - d) for cid, d in zip(result["ids"][0], result["distances"][0])]

    def lexical_search(self, terms: Sequence[str], n: int) -> list[tuple[str, float]]:
        """(chunk_id, BM25 score; higher is better), best first, for passages holding any of the terms.

        Only the question's rarest terms are searched, and none found in more than 5% of all
        passages: such terms weigh little in BM25, yet each makes SQLite score a large share of the
        index (at 100k passages, all of a question's words took ~120 ms; its 5 rarest ~15 ms).
        """
        limit = max(_MIN_DF_LIMIT, self.chunk_count() * _MAX_DF_SHARE)
        df = {t: self._document_frequency(t) for t in terms}
        kept = sorted((t for t in terms if 0 < df[t] <= limit), key=df.__getitem__)[:_MAX_TERMS]
        if not kept or n <= 0:
            return []
        query = " OR ".join(f'"{t}"' for t in kept)
        # BM25 once per matching passage, and the join for the best n only: half the time of scoring in
        # both SELECT and ORDER BY and joining every match (100k passages: p95 28 against 58 ms).
        rows = self._db().execute(
            "SELECT c.chunk_id, -best.score FROM (SELECT rowid, bm25(chunks_fts) AS score FROM chunks_fts "
            "WHERE chunks_fts MATCH ? ORDER BY score LIMIT ?) AS best JOIN chunks c ON c.rowid = best.rowid "
            "ORDER BY best.score",
            (query, n),
        ).fetchall()
        return [(cid, score) for cid, score in rows]

    def _document_frequency(self, term: str) -> int:
        """Passages holding the term (as the full-text index stems it); cached until the next write."""
        cached = self._df_cache.get(term)
        if cached is None:
            cached = self._db().execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{term}"',)).fetchone()[0]
            self._df_cache[term] = cached
        return cached

    def documents_holding(self, term: str, at_most: int) -> int:
        """How many documents have a passage holding the term (as the full-text index stems it),
        counted up to at_most: a common word stops the count early."""
        return self._db().execute(
            "SELECT count(*) FROM (SELECT DISTINCT doc_id FROM chunks WHERE rowid IN "
            "(SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?) LIMIT ?)", (f'"{term}"', at_most)).fetchone()[0]

    def chunks(self, chunk_ids: Sequence[str]) -> dict[str, StoredChunk]:
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = self._db().execute(
            f"SELECT c.chunk_id, c.doc_id, d.name, c.page, c.idx, c.text FROM chunks c "
            f"JOIN documents d ON d.doc_id = c.doc_id WHERE c.chunk_id IN ({marks})",
            list(chunk_ids),
        ).fetchall()
        return {row[0]: StoredChunk(*row) for row in rows}

    # --- writes ------------------------------------------------------------------------------

    def add_document(self, name: str, sha256: str, size_bytes: int, pages: int, profile: str,
                     chunks: Sequence[Chunk], search_texts: Sequence[str], embeddings: np.ndarray) -> None:
        """Store a document whole, replacing any document of the same name."""
        doc_id = chunks[0].doc_id
        with self._write_lock:
            db = self._db()
            with _transaction(db):
                db.execute("INSERT OR REPLACE INTO pending(doc_id) VALUES (?)", (doc_id,))
            self._upsert_vectors(chunks, embeddings)
            old = self.document(name)
            with _transaction(db):
                if old is not None:
                    self._delete_rows(db, old.doc_id)
                db.execute(
                    f"INSERT INTO documents({_DOC_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                    (name, doc_id, sha256, pages, len(chunks), size_bytes, time.time(), profile),
                )
                for chunk, search_text in zip(chunks, search_texts):
                    rowid = db.execute(
                        "INSERT INTO chunks(chunk_id, doc_id, page, idx, text) VALUES (?,?,?,?,?)",
                        (chunk.id, doc_id, chunk.page, chunk.index, chunk.text),
                    ).lastrowid
                    db.execute("INSERT INTO chunks_fts(rowid, search_text) VALUES (?, ?)", (rowid, search_text))
                db.execute("DELETE FROM pending WHERE doc_id = ?", (doc_id,))
                if old is not None and old.doc_id != doc_id:
                    db.execute("INSERT OR REPLACE INTO pending(doc_id) VALUES (?)", (old.doc_id,))
            self._df_cache.clear()
            if old is not None and old.doc_id != doc_id:
                self._sweep_pending()

    def remove_document(self, name: str) -> Document | None:
        with self._write_lock:
            db = self._db()
            old = self.document(name)
            if old is None:
                return None
            with _transaction(db):
                self._delete_rows(db, old.doc_id)
                db.execute("INSERT OR REPLACE INTO pending(doc_id) VALUES (?)", (old.doc_id,))
            self._df_cache.clear()
            self._sweep_pending()
            return old

    def _delete_rows(self, db: sqlite3.Connection, doc_id: str) -> None:
        db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT rowid FROM chunks WHERE doc_id = ?)", (doc_id,))
        db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

    def _upsert_vectors(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        step = 2000  # Chroma caps the batch size of one call
        for i in range(0, len(chunks), step):
            part = chunks[i:i + step]
            self._collection.upsert(
                ids=[c.id for c in part],
                embeddings=embeddings[i:i + step].tolist(),
                metadatas=[{"doc_id": c.doc_id, "page": c.page} for c in part],
            )

    def _sweep_pending(self) -> None:
        """Delete the vectors of documents that never committed, or were replaced or removed."""
        db = self._db()
        for (doc_id,) in db.execute("SELECT doc_id FROM pending").fetchall():
            live = db.execute("SELECT 1 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            if not live:
                self._collection.delete(where={"doc_id": doc_id})
            with _transaction(db):
                db.execute("DELETE FROM pending WHERE doc_id = ?", (doc_id,))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# Word search uses at most _MAX_TERMS terms of a question, none in more than _MAX_DF_SHARE of the
# passages (a limit never below _MIN_DF_LIMIT, so small knowledge bases keep all their words).
_MAX_TERMS = 5
_MAX_DF_SHARE = 0.05
_MIN_DF_LIMIT = 50
# HNSW's search breadth. At Chroma's default (100) a manual added after 20 filings lost up to 82% of
# its passages among a question's 60 nearest, in some loads of the index and not others; at 500
# each of 64 questions got all 60 back.
_EF_SEARCH = 500
_DOC_COLUMNS = "name, doc_id, sha256, pages, chunks, size_bytes, added_at, profile"


class _transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
