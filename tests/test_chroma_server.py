"""The knowledge base against a real Chroma server (`chroma run`) on 127.0.0.1."""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bot.llm import free_port
from knowledge.base import KnowledgeBase
from tests.pdfs import make_pdf


@pytest.fixture
def chroma_server(tmp_path):
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    port = free_port()
    proc = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("chroma server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ingest_and_search_through_a_chroma_server(config, embedder, chroma_server):
    config = dataclasses.replace(config, knowledge=dataclasses.replace(config.knowledge, chroma_url=chroma_server))
    kb = KnowledgeBase(config, embedder)
    kb.ingest("1", "fleet.pdf", make_pdf(["Fleet\nThe company operates 41 electric delivery vans."]))
    kb.ingest("2", "menu.pdf", make_pdf(["Menu\nSoup of the day is tomato."]))
    [hit] = kb.search("1", "How many electric vans?", k=1)
    assert (hit.file, hit.page) == ("fleet.pdf", 1)
    assert {p.file for p in kb.search("2", "electric vans", k=5)} == {"menu.pdf"}
    assert not (config.data_dir / "chroma").exists()  # vectors went to the server, not the embedded store
    kb.remove("1", "fleet.pdf")
    assert kb.search("1", "electric vans") == []
