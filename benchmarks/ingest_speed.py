"""Ingestion speed, end to end: PDFs in a folder -> a fresh knowledge base.

    python benchmarks/ingest_speed.py [FOLDER_OF_PDFS] [--device cpu|cuda] [--embedder NAME_OR_DIR]
                                      [--batch-size N] [--json OUT.json] [--site DIR]

Prints pages/s for the whole run (what a user waits for), and the time spent in each stage:
extraction and chunking (PDFium, in worker processes, overlapping the other stages), embedding and
storing (Chroma + SQLite) in the main process. benchmarks/gpu_bench.py runs it for its ingestion row.

The project is imported inside main(): every ingestion worker imports this script again
(multiprocessing does so with the main module), and Chroma and torch would cost each ~1 s of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?",
                        default=Path(__file__).resolve().parents[2] / "shared/data/rag-dev/docugami_sec10q/docs")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--embedder", help="knowledge.embedding_model (default: the configured one)")
    parser.add_argument("--batch-size", type=int, help="knowledge.embedding_batch_size (default: 256 on a GPU, 16 on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--site", type=Path, help="a folder of packages (chromadb's, brought along to a GPU machine), "
                        "searched after the machine's own")
    args = parser.parse_args()

    if args.site:
        site.addsitedir(str(args.site))

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bot.config import load_config
    from knowledge.base import KnowledgeBase

    env = {"BOT_KNOWLEDGE_EMBEDDING_DEVICE": args.device}
    if args.embedder:
        env["BOT_KNOWLEDGE_EMBEDDING_MODEL"] = args.embedder
    if args.batch_size:
        env["BOT_KNOWLEDGE_EMBEDDING_BATCH_SIZE"] = str(args.batch_size)
    kb = KnowledgeBase(load_config(None, env=env, data_dir=Path(tempfile.mkdtemp(prefix="kb-ingest-"))))
    kb.embedder.encode(["load the model before the clock starts"])
    pdfs = sorted(args.folder.glob("*.pdf"))

    started = time.perf_counter()
    results = list(kb.ingest_paths("bench", pdfs))
    wall = time.perf_counter() - started

    done = [r for r in results if r.status != "refused"]
    pages, chunks = sum(r.pages for r in done), sum(r.chunks for r in done)
    stage = {s: sum(r.timings[s] for r in done) for s in ("extract", "embed", "store")}
    print(f"{len(done)}/{len(pdfs)} PDFs, {pages} pages, {chunks} chunks, {os.cpu_count()} cores, "
          f"embedding on {kb.embedder.model.device} in {kb.embedder.precision}")
    print(f"end to end: {wall:.1f} s = {pages / wall:.1f} pages/s ({chunks / wall:.1f} chunks/s)")
    print(f"extraction and chunking: {stage['extract']:.1f} s in workers ({pages / stage['extract']:.1f} pages/s per worker)")
    print(f"embedding:  {stage['embed']:.1f} s ({chunks / stage['embed']:.1f} chunks/s)")
    print(f"storing:    {stage['store']:.1f} s ({chunks / stage['store']:.0f} chunks/s)")
    print(f"waiting for text: {wall - stage['embed'] - stage['store']:.1f} s of the main process")
    for r in results:
        if r.status == "refused":
            print(f"refused {r.file}: {r.reason}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": wall, "files": len(done), "pages": pages, "chunks": chunks,
                                         "workers": max(1, (os.cpu_count() or 2) - 1), **stage}))


if __name__ == "__main__":
    main()
