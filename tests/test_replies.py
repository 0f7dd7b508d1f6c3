"""Reply text: splitting at 2,000 characters (words, lines, code blocks), sources, cooldown."""

from bot.cooldown import Cooldown
from bot.pipeline import Done
from bot.prompt import Source
from bot.replies import CURSOR, MESSAGE_LIMIT, final_text, split_message, streaming_text


def test_short_text_is_one_message():
    assert split_message("hello") == ["hello"]
    assert split_message("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]


def test_long_prose_splits_between_words_and_loses_none():
    words = [f"word{i}" for i in range(1000)]
    text = " ".join(words)
    chunks = split_message(text)
    assert len(chunks) > 2 and all(len(c) <= MESSAGE_LIMIT for c in chunks)
    assert " ".join(chunks).split() == words  # no word cut or lost


def test_prefers_paragraph_then_line_breaks():
    first, second = "a" * 1200, "b " * 600
    chunks = split_message(f"{first}\n\n{second}")
    assert chunks[0] == first and chunks[1].startswith("b b")
    lines = "\n".join(f"line {i} " + "z" * 40 for i in range(80))
    chunks = split_message(lines)
    assert all(c.startswith("line ") for c in chunks)
    assert "\n".join(chunks).splitlines() == lines.splitlines()


def test_cuts_before_a_code_block_rather_than_inside_it():
    prose = "intro " * 200  # 1,200 characters
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(100)) + "\n```"
    chunks = split_message(prose + "\n" + code + "\nafter")
    assert chunks[0] == prose.rstrip()
    assert chunks[1].startswith("```python\n") and chunks[1].count("```") == 2


def test_a_code_block_longer_than_a_message_is_closed_and_reopened():
    body = [f"    value_{i} = compute({i})  # step" for i in range(150)]
    text = "```python\n" + "\n".join(body) + "\n```"
    chunks = split_message(text)
    assert len(chunks) >= 3 and all(len(c) <= MESSAGE_LIMIT for c in chunks)
    for chunk in chunks:
        assert chunk.startswith("```python\n") and chunk.endswith("```") and chunk.count("```") == 2
    inner = [line for c in chunks for line in c.splitlines() if not line.startswith("```")]
    assert inner == body  # every line whole, indentation kept


def test_a_word_longer_than_a_message_is_cut():
    chunks = split_message("y" * 4500)
    assert [len(c) for c in chunks] == [1996, 1996, 508]


def test_final_text_lists_sources_by_file_and_page():
    cited = (Source(1, "handbook.pdf", 3), Source(2, "handbook.pdf", 3), Source(3, "faq.pdf", 1))
    text = final_text(Done("answer", "Leave is 25 days [1][2].", cited, cited))
    assert text.endswith("-# Sources: [1][2] handbook.pdf p. 3 · [3] faq.pdf p. 1")
    consulted = final_text(Done("answer", "Not sure.", (), cited[:1]))
    assert consulted.endswith("-# Sources consulted: [1] handbook.pdf p. 3")
    assert "No passage" in final_text(Done("answer", "Hi.", (), ()))
    assert final_text(Done("error", "Sorry.")) == "Sorry."
    assert streaming_text("partial ") == "partial" + CURSOR and CURSOR not in final_text(Done("answer", "x"))


def test_cooldown_per_user():
    now = [100.0]
    cooldown = Cooldown(10, clock=lambda: now[0])
    assert cooldown.wait_left("ada") == 0 and cooldown.wait_left("bob") == 0
    now[0] = 104
    assert cooldown.wait_left("ada") == 6
    now[0] = 110
    assert cooldown.wait_left("ada") == 0
    assert Cooldown(0).wait_left("ada") == 0 and Cooldown(0).wait_left("ada") == 0
