"""Ingestion speed, end to end: PDFs in a folder -> a fresh knowledge base.

    python benchmarks/ingest_speed.py [FOLDER_OF_PDFS] [--device cpu|cuda]

Prints pages/s for the whole run (what a user waits for), and the time spent in each stage:
extraction (pypdf, in worker processes, overlapping the other stages), embedding and storing
(Chroma + SQLite) in the main process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import load_config  # noqa: E402
from knowledge.base import KnowledgeBase  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?",
                        default=Path(__file__).resolve().parents[2] / "shared/data/rag-dev/docugami_sec10q/docs")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    config = load_config(None, env={}, data_dir=Path(tempfile.mkdtemp(prefix="kb-ingest-")))
    config = dataclasses.replace(config, knowledge=dataclasses.replace(config.knowledge, embedding_device=args.device))
    kb = KnowledgeBase(config)
    kb.embedder.encode(["load the model before the clock starts"])
    pdfs = sorted(args.folder.glob("*.pdf"))

    started = time.perf_counter()
    results = list(kb.ingest_paths("bench", pdfs))
    wall = time.perf_counter() - started

    done = [r for r in results if r.status != "refused"]
    pages, chunks = sum(r.pages for r in done), sum(r.chunks for r in done)
    stage = {s: sum(r.timings[s] for r in done) for s in ("extract", "embed", "store")}
    print(f"{len(done)}/{len(pdfs)} PDFs, {pages} pages, {chunks} chunks, {os.cpu_count()} cores, "
          f"embedding on {kb.embedder.model.device}")
    print(f"end to end: {wall:.1f} s = {pages / wall:.1f} pages/s ({chunks / wall:.1f} chunks/s)")
    print(f"extraction: {stage['extract']:.1f} s in workers ({pages / stage['extract']:.1f} pages/s per worker)")
    print(f"embedding:  {stage['embed']:.1f} s ({chunks / stage['embed']:.1f} chunks/s)")
    print(f"storing:    {stage['store']:.1f} s ({chunks / stage['store']:.0f} chunks/s)")
    for r in results:
        if r.status == "refused":
            print(f"refused {r.file}: {r.reason}")


if __name__ == "__main__":
    main()
