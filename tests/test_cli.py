"""`python -m bot ingest|search|kb` as scripts use them: exit codes, one line per file, --json fields."""

import json
import subprocess
import sys
from pathlib import Path

from tests.pdfs import make_pdf

ROOT = Path(__file__).resolve().parent.parent


def bot(*args, data_dir=None):
    location = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run([sys.executable, "-m", "bot", *args, *location],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_ingest_search_list_remove(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "garden.pdf").write_bytes(make_pdf(["Garden\nWater the tomatoes every morning.", "Roses need pruning in March."]))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    (tmp_path / "q.txt").write_text("When do roses get pruned?\n\nHow often to water tomatoes?\n")
    data = tmp_path / "data"

    ingest = bot("ingest", "--guild", "7", str(docs), data_dir=data)
    assert ingest.returncode == 1  # one file was refused
    assert "broken.pdf: refused: the PDF is damaged or truncated" in ingest.stdout
    assert "garden.pdf: added, 2 pages, 2 chunks" in ingest.stdout

    search = bot("search", "--guild", "7", "--json", "-k", "1", "--queries", str(tmp_path / "q.txt"), data_dir=data)
    assert search.returncode == 0, search.stderr
    rows = [json.loads(line) for line in search.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"query", "rank", "file", "page", "score", "text"}] * 2
    assert [(r["query"], r["rank"], r["file"], r["page"]) for r in rows] == [
        ("When do roses get pruned?", 1, "garden.pdf", 2),
        ("How often to water tomatoes?", 1, "garden.pdf", 1),
    ]
    elsewhere = bot("search", "--guild", "8", "When do roses get pruned?", data_dir=data)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr == f"error: server 8 has no documents in {data} (servers with documents: 7)\n"
    assert not (data / "knowledge" / "8.sqlite3").exists()  # asking does not make an empty store

    assert "garden.pdf\t2 pages\t2 chunks" in bot("kb", "list", "--guild", "7", data_dir=data).stdout
    assert bot("kb", "list", "--guild", "8", data_dir=data).stdout.strip() == "no documents"
    missing = bot("kb", "remove", "--guild", "7", "nope.pdf", data_dir=data)
    assert missing.returncode == 1 and "no document named 'nope.pdf'" in missing.stderr
    assert bot("kb", "remove", "--guild", "7", "garden.pdf", data_dir=data).returncode == 0
    assert bot("kb", "list", "--guild", "7", data_dir=data).stdout.strip() == "no documents"


def test_bad_options_give_one_line(tmp_path):
    result = bot("search", "--guild", "7", "-k", "0", "question", data_dir=tmp_path)
    assert result.returncode == 1 and result.stderr.strip() == "error: -k must be between 1 and 100"
    result = bot("search", "--guild", "7", "--bogus", "q", data_dir=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00what")
    for name, reason in (("blank.txt", "holds no questions"), ("binary.txt", "is not UTF-8 text")):
        result = bot("search", "--guild", "7", "--queries", str(tmp_path / name), data_dir=tmp_path)
        assert result.returncode == 1 and result.stderr == f"error: {tmp_path / name} {reason}\n"


def test_run_without_token_says_so_in_one_line(tmp_path):
    result = bot("run", data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert result.stderr == "error: DISCORD_TOKEN is not set: put the bot's token in the environment or in a .env file\n"


def test_data_dir_goes_before_or_after_the_command(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    listed = bot("--data-dir", str(before), "kb", "list", "--guild", "7")
    assert listed.returncode == 0 and listed.stdout.strip() == "no documents", listed.stderr
    assert before.is_dir()
    # Both given: the one after the command wins.
    assert bot("--data-dir", str(before), "kb", "list", "--guild", "7", data_dir=after).returncode == 0
    assert after.is_dir()
