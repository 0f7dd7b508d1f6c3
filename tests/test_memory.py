import sqlite3

from bot.memory import Memory
from bot.prompt import Excerpt, Source


def test_exchanges_survive_reopen_and_stay_in_their_channel(tmp_path):
    path = tmp_path / "memory.sqlite3"
    memory = Memory(path)
    first = memory.start("chan-a", "42", "Ada", "What is the leave policy?")
    shown = (Excerpt(1, "handbook.pdf", 3, "Leave: twenty days.", "d:0"), Excerpt(2, "faq.pdf", 1, "Ask HR.", "f:4"))
    memory.finish(first, "Twenty days [1].", [Source(1, "handbook.pdf", 3)], "complete", list(shown))
    second = memory.start("chan-a", "43", "Bob", "And sick leave?")
    memory.finish(second, "Ten days.", [])
    memory.finish(memory.start("chan-b", "44", "Cy", "Other channel"), "Other answer", [])
    memory.close()

    memory = Memory(path)
    history = memory.history("chan-a", 10)
    assert [t.question for t in history] == ["And sick leave?", "What is the leave policy?"]  # newest first
    assert [t.author for t in history] == ["Bob", "Ada"]
    assert history[1].excerpts == shown and history[0].excerpts == ()  # what the model was shown, to show again
    shown = memory.show("chan-a")
    assert shown[0].author_id == "42" and shown[0].sources == [Source(1, "handbook.pdf", 3)]
    assert shown[0].answered_at >= shown[0].asked_at
    assert [t.question for t in memory.history("chan-b", 10)] == ["Other channel"]
    assert memory.history("chan-a", 1)[0].question == "And sick leave?"
    assert (memory.count("chan-a"), memory.count("chan-b"), memory.count("chan-c")) == (2, 1, 0)


def test_unfinished_answer_is_never_complete(tmp_path):
    path = tmp_path / "memory.sqlite3"
    memory = Memory(path)
    memory.start("c", "1", "Ada", "question left hanging")
    memory.close()  # as if the process died before the answer was written
    memory = Memory(path)
    [exchange] = memory.show("c")
    assert exchange.status == "interrupted" and exchange.answer is None
    assert memory.history("c", 10) == []


def test_reset_export_and_persona(tmp_path):
    memory = Memory(tmp_path / "m.sqlite3")
    memory.finish(memory.start("c", "1", "Ada", "Where is the office?"), "In Paris [1].", [Source(1, "guide.pdf", 2)])
    memory.start("c", "1", "Ada", "unanswered")
    markdown = memory.export_markdown("c")
    assert "> Where is the office?" in markdown and "In Paris [1]." in markdown
    assert "- [1] guide.pdf, p. 2" in markdown and "_No answer (pending)._" in markdown
    assert memory.reset("c") == 2
    assert memory.show("c") == [] and "_No messages yet._" in memory.export_markdown("c")

    assert memory.get_persona("c") is None
    memory.set_persona("c", "You are a pirate.")
    memory.set_persona("c", "You are a librarian.")
    assert memory.get_persona("c") == "You are a librarian." and memory.get_persona("other") is None
    assert memory.reset_persona("c") and memory.get_persona("c") is None


def test_a_memory_from_before_excerpts_were_kept_is_upgraded_in_place(tmp_path):
    path = tmp_path / "memory.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE exchanges (id INTEGER PRIMARY KEY, channel TEXT NOT NULL, author_id TEXT NOT NULL, "
                   "author_name TEXT NOT NULL, question TEXT NOT NULL, asked_at REAL NOT NULL, answer TEXT, "
                   "sources TEXT NOT NULL DEFAULT '[]', answered_at REAL, status TEXT NOT NULL DEFAULT 'pending')")
        db.execute("INSERT INTO exchanges (channel, author_id, author_name, question, asked_at, answer, status) "
                   "VALUES ('c', '1', 'Ada', 'Old question?', 1.0, 'Old answer.', 'complete')")
    memory = Memory(path)
    memory.finish(memory.start("c", "2", "Bob", "New question?"), "New answer [1].", [], "complete",
                  [Excerpt(1, "a.pdf", 1, "text", "a:0")])
    new, old = memory.history("c", 10)
    assert (old.question, old.excerpts) == ("Old question?", None)
    assert new.excerpts == (Excerpt(1, "a.pdf", 1, "text", "a:0"),)
    assert [e.status for e in memory.show("c")] == ["complete", "complete"]
