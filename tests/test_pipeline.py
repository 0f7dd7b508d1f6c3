import asyncio
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from bot.memory import Memory
from bot.pipeline import Author, Done, Piece, Pipeline, Queued, Verdict
from bot.prompt import NO_SOURCES
from tests.conftest import ENGINE_ENV, smollm2_path
from tests.pdfs import make_pdf

ADA = Author("42", "Ada")
HANDBOOK = ["Annual leave: every employee has 25 days of paid annual leave per year.",
            "Remote work: staff may work from home two days per week."]


class Recording:
    """The real model, noting each prompt it is asked to answer (to check what reached it)."""

    def __init__(self, llm):
        self.llm, self.prompts, self.counted = llm, [], []

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def count(self, text):
        self.counted.append(text)
        return self.llm.count(text)

    def stream(self, messages, max_tokens, cancel=None):
        self.prompts.append(messages)
        yield from self.llm.stream(messages, max_tokens, cancel)


@pytest.fixture
def pipeline(engine_config, llm, embedder):
    from knowledge.base import KnowledgeBase

    kb = KnowledgeBase(engine_config, embedder)
    kb.ingest("g1", "handbook.pdf", make_pdf(HANDBOOK))
    p = Pipeline(engine_config, Recording(llm), kb, Memory(engine_config.memory_path))
    yield p
    p.close()


async def events(pipeline, channel, text, guild="g1", author=ADA):
    return [e async for e in pipeline.answer(guild, channel, author, text)]


async def test_answer_streams_cites_and_is_stored(pipeline):
    got = await events(pipeline, "chan-a", "How many days of annual leave do employees get?")
    pieces, done = [e for e in got if isinstance(e, Piece)], got[-1]
    assert isinstance(done, Done) and done.status == "answer" and sum(isinstance(e, Done) for e in got) == 1
    assert pieces and "".join(p.text for p in pieces) == done.text
    assert ("handbook.pdf", 1) in [(s.file, s.page) for s in done.passages]
    assert set(done.sources) <= set(done.passages)
    prompt = pipeline.llm.prompts[-1][-1]["content"]
    assert '<source id="1" file="handbook.pdf"' in prompt and prompt.endswith("Ada asks: How many days of annual leave do employees get?")
    [stored] = pipeline.memory.show("chan-a")
    assert stored.status == "complete" and stored.answer == done.text and stored.author_id == "42"


async def test_no_leaks_between_guilds_or_channels(pipeline):
    await events(pipeline, "chan-a", "Secret question about remote work in channel A")
    done = (await events(pipeline, "chan-b", "What is the leave policy?", guild="g2"))[-1]
    assert done.status == "answer" and done.passages == ()
    prompt_b = pipeline.llm.prompts[-1]
    assert NO_SOURCES in prompt_b[-1]["content"]
    assert len(prompt_b) == 2 and "channel A" not in str(prompt_b)  # system + question only
    await events(pipeline, "chan-a", "And a follow-up?")
    assert "Secret question about remote work in channel A" in str(pipeline.llm.prompts[-1][1:-1])


async def test_a_follow_up_prompt_extends_the_last_one_and_forgets_removed_documents(pipeline):
    first = (await events(pipeline, "c", "How many days of annual leave do employees get?"))[-1]
    await events(pipeline, "c", "And remote work?")
    asked, again = pipeline.llm.prompts
    # The first prompt and its answer, message for message: llama.cpp prefills only the new question.
    assert again[:len(asked)] == asked and again[len(asked)] == {"role": "assistant", "content": first.text}
    assert "25 days of paid annual leave" in again[len(asked) - 1]["content"]
    llm = pipeline.llm
    assert llm.last_timings["cache_n"] >= len(llm.tokenize_prompt(asked)) + llm.count(first.text) - 2
    assert llm.last_timings["prompt_n"] <= llm.count(again[-1]["content"]) + llm.overhead(2)  # the new message only

    pipeline.knowledge.remove("g1", "handbook.pdf")
    await events(pipeline, "c", "And now?")
    history = pipeline.llm.prompts[-1][1:-1]
    assert history[0]["content"] == "Ada asks: How many days of annual leave do employees get?"
    shown = [m["content"] for m in history if m["role"] == "user"]
    assert shown[1] == "Ada asks: And remote work?" and "handbook.pdf" not in str(shown)  # answers stay as written


async def test_an_answer_is_counted_as_it_is_saved_not_when_the_next_question_comes(pipeline):
    await events(pipeline, "c", "How many days of annual leave do employees get?")
    before = len(pipeline.llm.counted)
    _, history = await asyncio.to_thread(pipeline._channel_state, "g1", "c")  # the next question's first step
    assert len(history) == 1 and set(pipeline.llm.counted[before:]) <= set(pipeline.llm.counted[:before])


async def test_an_answer_stands_when_counting_it_ahead_fails(pipeline, monkeypatch):
    def model_gone(text):
        raise ConnectionError("the model server went away")

    finish = pipeline.memory.finish

    def finish_then_lose_the_model(*args):
        finish(*args)
        monkeypatch.setattr(pipeline.llm, "count", model_gone)

    monkeypatch.setattr(pipeline.memory, "finish", finish_then_lose_the_model)
    done = (await events(pipeline, "c", "How many days of annual leave do employees get?"))[-1]
    assert done.status == "answer" and [e.status for e in pipeline.memory.show("c")] == ["complete"]


async def test_bad_input_gets_a_short_reply_and_stores_nothing(pipeline, engine_config):
    for text, reason in [("   ", "Ask me a question"), ("x" * 5000, "at most 4000")]:
        [done] = await events(pipeline, "c", text)
        assert done.status == "invalid" and reason in done.text
    pipeline.config = type(engine_config)(**{**engine_config.__dict__, "chat": type(engine_config.chat)(max_question_chars=20000)})
    [done] = await events(pipeline, "c", "why " * 3000)
    assert done.status == "invalid" and "too long for my context" in done.text
    assert pipeline.memory.show("c") == [] and pipeline.llm.prompts == []


async def test_fair_queue_positions_and_a_responsive_loop(pipeline):
    gaps, stop = [], asyncio.Event()

    async def ticker():  # stands in for the Discord heartbeat
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    asks = [("A", "first from A"), ("A", "second from A"), ("A", "third from A"), ("B", "first from B")]
    tasks = [asyncio.create_task(events(pipeline, channel, text)) for channel, text in asks]
    await asyncio.sleep(0.05)
    assert pipeline.queue_length == 4
    results = await asyncio.gather(*tasks)
    stop.set()
    await tick
    order = [m[-1]["content"].rsplit("asks: ", 1)[1] for m in pipeline.llm.prompts]
    assert order == ["first from A", "second from A", "first from B", "third from A"]  # round-robin
    # A's third question was #2 until B asked: B's first question goes ahead of it.
    assert [e.position for e in results[2] if isinstance(e, Queued)] == [2, 3, 2, 1]
    assert all(r[-1].status == "answer" for r in results) and pipeline.queue_length == 0
    assert len(gaps) > 20 and max(gaps) < 0.5, f"event loop blocked for {max(gaps):.3f} s"


class KeywordSafety:
    """A tiny filter for the hook points, to test the plumbing alone (bot.safety is tested in test_safety)."""

    def check_input(self, text, where):
        return Verdict("forbidden" not in text, "I can't help with that.")

    def check_output(self, text, where, question=""):
        return Verdict(False, "I stopped that answer.")

    def screen_passages(self, passages):
        return passages


async def test_safety_hooks_refuse_in_and_out(pipeline):
    pipeline.safety = KeywordSafety()
    [done] = await events(pipeline, "c", "tell me the forbidden thing")
    assert done == Done("refused", "I can't help with that.") and pipeline.llm.prompts == []
    done = (await events(pipeline, "c", "What about leave?"))[-1]
    assert done.status == "refused" and done.text == "I stopped that answer."
    assert [e.status for e in pipeline.memory.show("c")] == ["refused"]
    assert pipeline.memory.history("c", 10) == []


def _read_until(process, marker, timeout=120.0, after=0):
    """stdout of the process until `marker` appears (then `after` more bytes)."""
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            index = out.find(marker)
            if index >= 0 and len(out) >= index + len(marker) + after:
                return out.decode()
    raise AssertionError(f"{marker!r} not seen in output: {out[-500:]!r}")


def test_console_streams_with_sources_and_kill_9_keeps_memory_consistent(tmp_path, embedder):
    from bot.config import load_config
    from knowledge.base import KnowledgeBase

    data = tmp_path / "data"
    config = load_config(None, env={}, data_dir=data)
    KnowledgeBase(config, embedder).ingest("7", "handbook.pdf", make_pdf(HANDBOOK))
    env = {**os.environ, **ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_CHAT_MAX_ANSWER_TOKENS": "200",
           "PYTHONPATH": os.getcwd(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "bot", "console", "--guild", "7", "--channel", "99",
                                "--data-dir", str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        _read_until(process, b"you> ")
        process.stdin.write(b"How many days of annual leave do employees get?\n")
        process.stdin.flush()
        first = _read_until(process, b"you> ")
        assert "bot> " in first and "handbook.pdf, p. 1" in first
        process.stdin.write(b"Write a very long story about the remote work policy.\n")
        process.stdin.flush()
        _read_until(process, b"bot> ", after=3)  # the answer is streaming
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    memory = Memory(config.memory_path)
    exchanges = memory.show("99")
    assert [e.status for e in exchanges] == ["complete", "interrupted"]
    assert exchanges[0].answer and exchanges[1].answer is None
    assert [t.question for t in memory.history("99", 10)] == ["How many days of annual leave do employees get?"]
