"""`python -m bot console`: chat in the terminal with the same pipeline the Discord bot uses.

Lines starting with / are commands: /show, /reset, /export, /persona [TEXT | reset], /status, /quit.
"""

from __future__ import annotations

import asyncio
import getpass
import sys

from bot.config import Config
from bot.pipeline import Author, Done, Pipeline, Piece, Queued
from bot.prompt import format_sources

HELP = "commands: /show, /reset, /export, /persona [TEXT | reset], /status, /quit (or Ctrl-D)"


def build_pipeline(config: Config) -> Pipeline:
    from bot.llm import load_model
    from bot.memory import Memory
    from bot.safety import SafetyFilter
    from knowledge.base import KnowledgeBase

    llm = load_model(config.model)
    knowledge = KnowledgeBase(config)
    knowledge.embedder.warm_up()
    return Pipeline(config, llm, knowledge, Memory(config.memory_path), SafetyFilter.open(config))


async def chat(pipeline: Pipeline, guild: str, channel: str, out=sys.stdout) -> None:
    author = Author(id="console", name=getpass.getuser())
    print(f"Chatting in guild {guild}, channel {channel} with {pipeline.llm.describe()}. {HELP}", file=out, flush=True)
    while True:
        try:
            line = await asyncio.to_thread(input, "you> ")
        except EOFError:
            print(file=out)
            return
        if line.strip().startswith("/"):
            if await _command(pipeline, channel, line.strip(), out) == "quit":
                return
            continue
        print("bot> ", end="", file=out, flush=True)
        async for event in pipeline.answer(guild, channel, author, line):
            if isinstance(event, Queued):
                print(f"(#{event.position} in line) ", end="", file=out, flush=True)
            elif isinstance(event, Piece):
                print(event.text, end="", file=out, flush=True)
            elif isinstance(event, Done):
                _print_done(event, out)


def _print_done(done: Done, out) -> None:
    if done.status != "answer":
        print(f"\n[{done.status}] {done.text}", file=out, flush=True)
        return
    print(file=out)
    if done.sources:
        print("Sources:\n" + format_sources(done.sources), file=out)
    elif done.passages:
        print("(no source cited; passages given:)\n" + format_sources(done.passages), file=out)
    else:
        print("(no passages found in this server's documents)", file=out)
    out.flush()


async def _command(pipeline: Pipeline, channel: str, line: str, out) -> str | None:
    name, _, rest = line.partition(" ")
    memory = pipeline.memory
    if name == "/quit":
        return "quit"
    if name == "/show":
        for e in await asyncio.to_thread(memory.show, channel, 10):
            print(f"{e.author_name}: {e.question}\n  -> {(e.answer or '(' + e.status + ')')[:200]}", file=out)
    elif name == "/reset":
        print(f"forgot {await asyncio.to_thread(memory.reset, channel)} exchanges", file=out)
    elif name == "/export":
        print(await asyncio.to_thread(memory.export_markdown, channel), file=out)
    elif name == "/persona" and rest.strip() == "reset":
        await pipeline.reset_persona(channel)
        print("persona reset to the default", file=out)
    elif name == "/persona" and rest.strip():
        try:
            await pipeline.set_persona(channel, rest)
            print("persona set", file=out)
        except ValueError as e:
            print(e, file=out)
    elif name == "/persona":
        persona, own = await pipeline.persona(channel)
        print(f"{'channel persona' if own else 'default persona'}: {persona}", file=out)
    elif name == "/status":
        print(f"model: {pipeline.llm.describe()}; requests in queue: {pipeline.queue_length}", file=out)
    else:
        print(HELP, file=out)
    out.flush()
    return None
