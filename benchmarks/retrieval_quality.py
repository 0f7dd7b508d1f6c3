"""Retrieval quality: document hit@5 on a folder of PDFs with questions, ours vs. a baseline.

    python benchmarks/retrieval_quality.py [--data ../shared/data/rag-dev/docugami_sec10q] [--hide-file-names]

The folder holds docs/*.pdf and qna_data.csv (columns Question, Source Docs, Question Type).
All PDFs go into ONE knowledge base. A question scores a hit when one of the top-5 passages comes
from a file matching its `Source Docs` glob. The baseline is retrieval "as Open WebUI ships it":
1,000-character chunks with 100 overlap, all-MiniLM-L6-v2, vector search only.

Questions are split in two by a hash of their text: `tune` (about 40%, used to choose the
settings) and `report` (the rest, never looked at while tuning). Both are printed.

--hide-file-names ingests the PDFs as document-NN.pdf in a shuffled order, so that only their text
can say which company and quarter each is (hits are still scored on the real names).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import load_config  # noqa: E402
from knowledge.base import KnowledgeBase  # noqa: E402
from knowledge.pdf import extract_pages  # noqa: E402

K = 5


def split_of(question: str) -> str:
    return "tune" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 < 4 else "report"


def load_questions(folder: Path) -> list[dict]:
    with open(folder / "qna_data.csv", encoding="utf-8-sig", newline="") as f:
        return [{"q": r["Question"].strip(), "glob": r["Source Docs"].strip(), "type": r["Question Type"].strip()}
                for r in csv.DictReader(f)]


def hit(files: list[str], glob: str) -> bool:
    return any(fnmatch.fnmatch(f, glob) for f in files)


def baseline_retriever(kb: KnowledgeBase, pdfs: list[Path]):
    """1,000-character chunks, 100 overlap (split at paragraph, line, word, like LangChain's
    RecursiveCharacterTextSplitter), one page at a time, embedded whole, cosine top-k."""
    texts, files = [], []
    for pdf in pdfs:
        for page in extract_pages(pdf.read_bytes(), 10**9, 10**6):
            for piece in recursive_split(page.text, 1000, 100):
                texts.append(piece)
                files.append(pdf.name)
    vectors = kb.embedder.encode(texts)

    def search(question: str) -> list[str]:
        scores = vectors @ kb.embedder.encode([question])[0]
        return [files[i] for i in np.argsort(-scores)[:K]]

    return search, len(texts)


def recursive_split(text: str, size: int, overlap: int, seps=("\n\n", "\n", " ", "")) -> list[str]:
    if len(text) <= size:
        return [text] if text.strip() else []
    sep = next(s for s in seps if s == "" or s in text)
    parts = text.split(sep) if sep else list(text)
    chunks, current = [], ""
    for part in parts:
        candidate = current + sep + part if current else part
        if len(candidate) <= size:
            current = candidate
            continue
        if current:
            chunks.append(current)
            current = current[-overlap:] + sep + part if overlap else part
            if len(current) > size:
                current = part
        if len(part) > size:
            chunks.extend(recursive_split(part, size, overlap, seps[seps.index(sep) + 1:]))
            current = ""
    if current.strip():
        chunks.append(current)
    return chunks


def report(name: str, rows: list[dict], key: str) -> None:
    for split in ("tune", "report", "all"):
        chosen = [r for r in rows if split == "all" or r["split"] == split]
        by_type = defaultdict(list)
        for r in chosen:
            by_type[r["type"]].append(r[key])
        parts = "  ".join(f"{t.replace(' RAG', '')} {np.mean(v):.3f} (n={len(v)})" for t, v in sorted(by_type.items()))
        print(f"{name:<9} {split:<7} hit@5 {np.mean([r[key] for r in chosen]):.3f} (n={len(chosen)})  {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/rag-dev/docugami_sec10q")
    parser.add_argument("--data-dir", type=Path, default=None, help="knowledge base to (re)use; default: a temp dir")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--hide-file-names", action="store_true", help="ingest the PDFs as document-NN.pdf")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="kb-bench-"))
    kb = KnowledgeBase(load_config(None, env={}, data_dir=data_dir))
    pdfs = sorted((args.data / "docs").glob("*.pdf"))
    real_name = {pdf.name: pdf.name for pdf in pdfs}
    if args.hide_file_names:
        hidden = Path(tempfile.mkdtemp(prefix="kb-bench-docs-"))
        for i, pdf in enumerate(random.Random(0).sample(pdfs, len(pdfs)), 1):
            (hidden / f"document-{i:02d}.pdf").symlink_to(pdf.resolve())
            real_name[f"document-{i:02d}.pdf"] = pdf.name
        pdfs = sorted(hidden.glob("*.pdf"))
    started = time.perf_counter()
    results = list(kb.ingest_paths("bench", pdfs))
    refused = [r for r in results if r.status == "refused"]
    pages = sum(r.pages for r in results)
    print(f"ingested {len(pdfs) - len(refused)}/{len(pdfs)} PDFs, {pages} pages, "
          f"{sum(r.chunks for r in results)} chunks in {time.perf_counter() - started:.1f} s into {data_dir}")
    for r in refused:
        print(f"  refused {r.file}: {r.reason}")

    rows = load_questions(args.data)
    for r in rows:
        r["split"] = split_of(r["q"])
        files = [real_name[p.file] for p in kb.search("bench", r["q"], K)]
        r["ours"] = hit(files, r["glob"])
        r["files"] = files
    if not args.no_baseline:
        search, n = baseline_retriever(kb, pdfs)
        print(f"baseline: {n} chunks of 1,000 characters")
        for r in rows:
            r["baseline"] = hit([real_name[f] for f in search(r["q"])], r["glob"])
        report("baseline", rows, "baseline")
    report("ours", rows, "ours")
    if args.show_misses:
        for r in rows:
            if not r["ours"] and r["split"] == "tune":
                print(f"MISS [{r['glob']}] {r['q']}\n     got {r['files']}")


if __name__ == "__main__":
    main()
