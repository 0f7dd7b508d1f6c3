import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pdfs import inflating_pdf, make_pdf

GUILD, OTHER = "111", "222"

HANDBOOK = make_pdf([
    "Employee handbook\nVacation: every employee gets 27 days of paid leave per year.",
    "Expenses\nTravel expenses are reimbursed within 14 days of filing the receipt.",
    "Security\nLaptops must use full-disk encryption and a screen lock after 5 minutes.",
])
RECIPES = make_pdf(["Pancakes\nMix 200 g flour, 2 eggs and 300 ml milk; fry in butter."])


def test_ingest_then_search_cites_file_and_page(kb):
    result = kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    assert (result.status, result.pages) == ("added", 3)
    assert result.chunks >= 3
    top = kb.search(GUILD, "How many days of paid vacation do I get?")[0]
    assert (top.file, top.page) == ("handbook.pdf", 1)
    assert "27 days" in top.text
    top = kb.search(GUILD, "when are travel costs paid back")[0]
    assert (top.file, top.page) == ("handbook.pdf", 2)


def test_guilds_never_see_each_other(kb):
    kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    kb.ingest(OTHER, "recipes.pdf", RECIPES)
    assert {p.file for p in kb.search(OTHER, "paid vacation days per year", k=10)} == {"recipes.pdf"}
    assert {p.file for p in kb.search(GUILD, "pancakes flour eggs milk", k=10)} == {"handbook.pdf"}
    assert [d.name for d in kb.documents(OTHER)] == ["recipes.pdf"]
    assert kb.search("333", "anything") == []


def test_same_file_again_changes_nothing(kb):
    first = kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    again = kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    assert again.status == "unchanged"
    [doc] = kb.documents(GUILD)
    assert (doc.chunks, doc.pages) == (first.chunks, first.pages)
    assert kb.store(GUILD)._collection.count() == first.chunks


def test_new_content_under_same_name_replaces_old_chunks(kb):
    kb.ingest(GUILD, "policy.pdf", HANDBOOK)
    result = kb.ingest(GUILD, "policy.pdf", RECIPES)
    assert result.status == "replaced"
    [doc] = kb.documents(GUILD)
    assert doc.chunks == result.chunks
    assert kb.store(GUILD)._collection.count() == result.chunks
    assert all("vacation" not in p.text.lower() for p in kb.search(GUILD, "paid vacation days", k=10))


def test_remove_deletes_every_chunk(kb):
    kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    kb.ingest(GUILD, "recipes.pdf", RECIPES)
    assert kb.remove(GUILD, "handbook.pdf").name == "handbook.pdf"
    assert kb.remove(GUILD, "handbook.pdf") is None
    assert [d.name for d in kb.documents(GUILD)] == ["recipes.pdf"]
    store = kb.store(GUILD)
    assert store._collection.count() == store.chunk_count() == kb.documents(GUILD)[0].chunks
    assert {p.file for p in kb.search(GUILD, "paid vacation days", k=10)} == {"recipes.pdf"}


def test_bad_file_is_refused_and_store_unchanged(kb):
    kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    before = kb.documents(GUILD)
    for name, data in [("notes.pdf", b"plain text"), ("handbook.pdf", HANDBOOK[:300]), ("empty.pdf", b"")]:
        result = kb.ingest(GUILD, name, data)
        assert result.status == "refused" and result.reason
    assert kb.documents(GUILD) == before
    assert kb.search(GUILD, "paid vacation")[0].file == "handbook.pdf"


def test_ingest_paths_keeps_going_after_a_bad_file(kb, tmp_path):
    (tmp_path / "a.pdf").write_bytes(b"not a pdf at all")
    (tmp_path / "b.pdf").write_bytes(HANDBOOK)
    seen = []
    results = list(kb.ingest_paths(GUILD, [tmp_path / "a.pdf", tmp_path / "b.pdf"],
                                   lambda f, done, total: seen.append((f, done, total))))
    assert [(r.file, r.status) for r in results] == [("a.pdf", "refused"), ("b.pdf", "added")]
    assert "not a PDF" in results[0].reason
    assert seen[-1] == ("b.pdf", 3, 3)


def test_a_big_file_extracted_by_several_workers_is_stored_whole(kb, tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # as on a bigger machine: 3 workers share each file
    report = make_pdf([f"Section {n}\nQuarterly revenue of segment {n} grew {n}%." for n in range(1, 10)])
    (tmp_path / "report.pdf").write_bytes(report)
    (tmp_path / "small.pdf").write_bytes(RECIPES[:-300])  # truncated: refused, the other file still added
    results = list(kb.ingest_paths(GUILD, [tmp_path / "report.pdf", tmp_path / "small.pdf"]))
    assert [(r.file, r.status, r.pages) for r in results] == [("report.pdf", "added", 9), ("small.pdf", "refused", 0)]
    assert "damaged" in results[1].reason
    passage = kb.search(GUILD, "revenue of segment 7")[0]
    assert (passage.file, passage.page) == ("report.pdf", 7) and "grew 7%" in passage.text


def test_workers_cut_the_same_chunks_as_the_main_process(kb, tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # 3 workers share the file, each chunking its pages
    rows = [f"Segment {n} | revenue {n * 1.5:,.1f} | margin {n % 7}% | outlook: steady growth, café ±{n}" for n in range(40)]
    report = make_pdf(["\n".join(rows[i:i + 20]) for i in range(0, 40, 10)] * 2)  # pages of several chunks each
    (tmp_path / "report.pdf").write_bytes(report)
    [by_workers] = kb.ingest_paths(GUILD, [tmp_path / "report.pdf"])
    # As with a model whose tokenizer cannot be sent to workers: they extract, the main process chunks.
    monkeypatch.setattr(kb.embedder, "tokenizer_json", lambda: None)
    in_process = kb.ingest(OTHER, "report.pdf", report)
    assert by_workers.chunks == in_process.chunks > by_workers.pages == 8
    doc_id = kb.documents(GUILD)[0].doc_id
    ids = [f"{doc_id}:{i}" for i in range(by_workers.chunks)]
    stored = [kb.store(guild).chunks(ids) for guild in (GUILD, OTHER)]
    assert [(stored[0][i].page, stored[0][i].text) for i in ids] == [(stored[1][i].page, stored[1][i].text) for i in ids]
    assert [stored[0][i].page for i in ids] == sorted(stored[0][i].page for i in ids)


def die(*args):
    os._exit(1)  # as a worker killed by a crash in PDFium or by the kernel's out-of-memory killer


def test_a_file_that_kills_its_worker_is_refused_and_the_caller_lives_on(kb, monkeypatch):
    kb.ingest(GUILD, "handbook.pdf", HANDBOOK)
    before = kb.documents(GUILD)
    # Forked workers see this process's modules, and so the job replaced by die.
    monkeypatch.setattr("knowledge.base._worker_processes", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr("knowledge.ingest_worker.extract_and_chunk", die)
    result = kb.ingest(GUILD, "handbook.pdf", RECIPES)
    assert result.status == "refused" and "crashed" in result.reason
    monkeypatch.undo()
    assert kb.documents(GUILD) == before
    assert kb.ingest(GUILD, "recipes.pdf", RECIPES).status == "added"


def test_a_file_that_needs_too_much_memory_is_refused_and_the_others_still_added(kb, tmp_path):
    from knowledge.ingest_worker import MEMORY_LIMIT

    (tmp_path / "bomb.pdf").write_bytes(inflating_pdf(MEMORY_LIMIT + (200 << 20)))  # ~6 MB on disk
    (tmp_path / "handbook.pdf").write_bytes(HANDBOOK)
    results = list(kb.ingest_paths(GUILD, [tmp_path / "bomb.pdf", tmp_path / "handbook.pdf"]))
    assert [(r.file, r.status) for r in results] == [("bomb.pdf", "refused"), ("handbook.pdf", "added")]
    assert "needed over 1 GB of memory" in results[0].reason
    # The same text, inflating to less, is read: what was refused was the size.
    assert kb.ingest(GUILD, "small.pdf", inflating_pdf(50 << 20)).status == "added"


def test_workers_take_each_page_once_and_skip_a_file_already_taken_or_refused(monkeypatch):
    import threading

    from knowledge import ingest_worker

    for name in ("_tokenizer", "_lock", "_next_page", "_page_count"):
        monkeypatch.setattr(ingest_worker, name, None)  # start() sets them: restored after the test
    ingest_worker.start(None, multiprocessing.Lock(), multiprocessing.RawArray("q", 2), multiprocessing.RawArray("q", 2))
    report = make_pdf([f"Page {n}: segment revenue grew {n}%." for n in range(1, 41)])
    shares = []
    jobs = [threading.Thread(target=lambda: shares.append(ingest_worker.extract_and_chunk(0, report, 10**6, 100, 200, 0)))
            for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    taken = sorted(page.number for share in shares for page in share.pages)
    assert taken == list(range(1, 41))  # every page once, whichever worker took it
    late = ingest_worker.extract_and_chunk(0, b"", 10**6, 100, 200, 0)  # would be refused if it opened the file
    assert (late.pages, late.reason) == ([], "")
    assert "damaged" in ingest_worker.extract_and_chunk(1, RECIPES[:-300], 10**6, 100, 200, 0).reason
    assert ingest_worker.extract_and_chunk(1, RECIPES[:-300], 10**6, 100, 200, 0).reason == ""  # told once


def test_every_worker_takes_part_in_a_lone_file_and_at_least_four_in_each_of_many():
    from knowledge.ingest_worker import jobs_per_file

    assert jobs_per_file(1, 15) == 15
    assert jobs_per_file(3, 15) == 5
    assert jobs_per_file(20, 15) == 4
    assert jobs_per_file(20, 3) == 3
    assert jobs_per_file(20, 1) == jobs_per_file(0, 15) == 1


def test_worker_counts_tokens_as_the_embedding_model(embedder, monkeypatch):
    from knowledge import ingest_worker
    from knowledge.embeddings import Embedder

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # start() changes both: restored after the test
    monkeypatch.setattr(ingest_worker, "_tokenizer", None)
    unloaded = Embedder(embedder.model_name)
    ingest_worker.start(unloaded.tokenizer_json(), None, None, None)  # from the model's files, before the model loads
    assert unloaded._model is None
    texts = ["Net revenue | $ 52,857 | 49,360", "Übersicht: Umsatzerlöse ±3.2 %", "x" * 900, ""]
    assert ingest_worker.count_tokens(texts) == embedder.count_tokens(texts)


KILL_DURING_INGEST = """
import os, signal, sys
from bot.config import load_config
from knowledge.base import KnowledgeBase
from knowledge.store import GuildStore
from tests.pdfs import make_pdf
from tests.test_knowledge_base import HANDBOOK, RECIPES

kb = KnowledgeBase(load_config(None, env={}, data_dir=sys.argv[1]))
kb.ingest("111", "handbook.pdf", RECIPES)       # an older version of the file, stored whole

original = GuildStore._upsert_vectors
def upsert_then_die(self, chunks, embeddings):
    original(self, chunks, embeddings)          # the new version's vectors are in Chroma ...
    os.kill(os.getpid(), signal.SIGKILL)        # ... and the process dies before committing
GuildStore._upsert_vectors = upsert_then_die
kb.ingest("111", "handbook.pdf", HANDBOOK)
"""


def test_kill_during_ingest_leaves_old_document_whole(tmp_path, embedder):
    # A separate process does the writing, so no Chroma state is cached in this one.
    data_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_INGEST, str(data_dir)],
                          cwd=Path(__file__).parent.parent, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    from bot.config import load_config
    from knowledge.base import KnowledgeBase

    kb = KnowledgeBase(load_config(None, env={}, data_dir=data_dir), embedder)
    [doc] = kb.documents(GUILD)  # opening the store sweeps the half-written version's vectors
    store = kb.store(GUILD)
    assert store._collection.count() == doc.chunks == store.chunk_count()
    hits = kb.search(GUILD, "paid vacation days", k=10)
    assert hits and all("vacation" not in p.text and "flour" in p.text for p in hits)


def test_vector_search_looks_wide_in_new_and_older_stores(tmp_path):
    from knowledge.store import GuildStore, chroma_client

    client = chroma_client(tmp_path / "chroma", "")
    client.create_collection("kb_old", embedding_function=None, metadata={"hnsw:space": "cosine"})  # Chroma's breadth
    for guild in ("new", "old"):
        store = GuildStore(guild, client, tmp_path / "sqlite")
        assert store._collection.configuration["hnsw"]["ef_search"] == 500
    assert client.get_collection("kb_old", embedding_function=None).configuration["hnsw"]["ef_search"] == 500


def test_missing_embedding_model_says_what_to_do(tmp_path):
    from knowledge.embeddings import Embedder, EmbeddingModelError

    missing = Embedder(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(EmbeddingModelError, match="cannot load embedding model .*set knowledge.embedding_model to a local directory"):
        missing.encode(["hello"])


def test_embedding_batches_follow_the_config_or_the_device(embedder):
    from knowledge.embeddings import Embedder

    assert embedder.batch_size == 16  # configured 0, the default: the CPU's best
    assert Embedder(embedder.model_name, device="cpu", batch_size=48).batch_size == 48


def test_embedding_on_all_cores_gives_the_same_vectors_in_order(embedder):
    texts = [f"passage {i}: " + "revenue " * (i * 7 % 50) for i in range(3 * embedder.batch_size)]
    # Batches made of other texts pad differently, so bfloat16 vectors may differ in the 4th digit.
    cosines = (embedder.encode(texts, all_cores=True) * embedder.encode(texts)).sum(axis=1)
    assert cosines.min() > 0.9999


def test_questions_asked_at_once_are_embedded_together_each_getting_its_own_vector(embedder):
    import threading

    questions = [f"What was the revenue of segment {i} in quarter {i % 4 + 1}?" for i in range(12)]
    alone = embedder.encode(questions)
    together: list = [None] * len(questions)
    start = threading.Barrier(len(questions))

    def ask(i):
        start.wait()
        together[i] = embedder.encode_question(questions[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert min(float(alone[i] @ together[i]) for i in range(len(questions))) > 0.9999
