"""Query latency of KnowledgeBase.search (embed + vector + word search + fusion) at 10k and 100k chunks.

    python benchmarks/query_latency.py [--sizes 10000 100000] [--queries 200] [--device cpu|cuda]
                                       [--embedder NAME_OR_DIR] [--steps]

Filling a store with 100k really embedded chunks would take hours on a small CPU, so the stored
chunks are synthetic: texts drawn from the words of real PDFs (the docugami 10-Qs by default, so
word frequencies are realistic) and random unit vectors. Everything a query does is real: the
question is embedded by the model, Chroma's HNSW index and SQLite FTS5 are searched, and results
are fused and fetched. Questions come from the same folder's qna_data.csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import load_config  # noqa: E402
from knowledge import retrieval  # noqa: E402
from knowledge.base import _CANDIDATES, KnowledgeBase  # noqa: E402
from knowledge.chunking import Chunk  # noqa: E402
from knowledge.pdf import extract_pages  # noqa: E402

CHUNK_WORDS = 130  # about 200 word pieces
DOC_CHUNKS = 500   # chunks per synthetic document


def corpus_words(folder: Path, max_files: int = 4) -> list[str]:
    words: list[str] = []
    for pdf in sorted((folder / "docs").glob("*.pdf"))[:max_files]:
        for page in extract_pages(pdf.read_bytes(), 10**9, 10**6):
            words.extend(page.text.split())
    return words


def fill(kb: KnowledgeBase, guild: str, n_chunks: int, words: list[str], dim: int, rng,
         chunk_words: int = CHUNK_WORDS) -> None:
    store = kb.store(guild)
    have = store.chunk_count()
    for d in range(have // DOC_CHUNKS, n_chunks // DOC_CHUNKS):
        doc_id = f"synthetic{d:05d}"
        name = f"{2000 + d % 25} Q{d % 4 + 1} report {d}.pdf"
        chunks, texts = [], []
        for i in range(DOC_CHUNKS):
            start = int(rng.integers(0, len(words) - chunk_words))
            text = " ".join(words[start:start + chunk_words])
            chunks.append(Chunk(f"{doc_id}:{i}", doc_id, name, i // 4 + 1, i, text))
            texts.append(f"{name}\n{text}")
        vectors = rng.standard_normal((DOC_CHUNKS, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.add_document(name, doc_id, 0, DOC_CHUNKS // 4, f"{name}\n{texts[0][:500]}", chunks, texts, vectors)
        print(f"\r  {store.chunk_count():,} chunks", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/rag-dev/docugami_sec10q")
    parser.add_argument("--data-dir", type=Path, default=None, help="store to (re)use; default: a temp dir")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where questions are embedded")
    parser.add_argument("--embedder", help="knowledge.embedding_model (default: the configured one)")
    parser.add_argument("--steps", action="store_true", help="also time each step of a search apart")
    args = parser.parse_args()

    env = {"BOT_KNOWLEDGE_EMBEDDING_DEVICE": args.device}
    if args.embedder:
        env["BOT_KNOWLEDGE_EMBEDDING_MODEL"] = args.embedder
    kb = KnowledgeBase(load_config(None, env=env, data_dir=args.data_dir or Path(tempfile.mkdtemp(prefix="kb-latency-"))))
    with open(args.data / "qna_data.csv", encoding="utf-8-sig", newline="") as f:
        questions = [r["Question"] for r in csv.DictReader(f)]
    words = corpus_words(args.data)
    rng = np.random.default_rng(0)
    kb.search("warmup", "warm up the model")  # load the embedder outside the timings
    print(f"{'chunks':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  ({args.queries} queries, k=5, "
          f"embedding on {kb.embedder.model.device} in {kb.embedder.precision})")
    for size in sorted(args.sizes):
        guild = f"latency{size}"
        fill(kb, guild, size, words, kb.embedder.dimension, rng)
        for q in questions[:10]:
            kb.search(guild, q)  # warm caches (HNSW index load, SQLite pages)
        times = []
        for i in range(args.queries):
            started = time.perf_counter()
            kb.search(guild, questions[i % len(questions)])
            times.append((time.perf_counter() - started) * 1000)
        p50, p95 = np.percentile(times, [50, 95])
        print(f"{kb.store(guild).chunk_count():>8,} {p50:>8.1f} {p95:>8.1f} {max(times):>8.1f}")
        if args.steps:
            print("          steps, one after another, p50 ms: " + ", ".join(
                f"{step} {ms:.2f}" for step, ms in steps_ms(kb, guild, questions[:args.queries]).items()))


def steps_ms(kb: KnowledgeBase, guild: str, questions: list[str]) -> dict[str, float]:
    """KnowledgeBase.search's steps timed apart (in search, the word search runs beside the embedding
    and the vector search)."""
    store, spent = kb.store(guild), {}
    for question in questions:
        marks = [time.perf_counter()]
        vector = kb.embedder.encode_question(question)
        marks.append(time.perf_counter())
        vector_hits = store.vector_search(vector, _CANDIDATES)
        marks.append(time.perf_counter())
        lexical_hits = store.lexical_search(retrieval.query_terms(question), _CANDIDATES)
        marks.append(time.perf_counter())
        stored = store.chunks(retrieval.unique(cid for cid, _ in [*vector_hits, *lexical_hits]))
        marks.append(time.perf_counter())
        retrieval.fuse([h for h in vector_hits if h[0] in stored], lexical_hits,
                       {cid: c.doc_id for cid, c in stored.items()}, kb._router(store).scores(question),
                       retrieval.DOC_WEIGHT)
        marks.append(time.perf_counter())
        for step, start, end in zip(("embed", "vector search", "word search", "fetch", "rank"), marks, marks[1:]):
            spent.setdefault(step, []).append(1000 * (end - start))
    return {step: float(np.median(times)) for step, times in spent.items()}


if __name__ == "__main__":
    main()
