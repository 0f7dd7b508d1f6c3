"""The one service the Discord cogs call: answers, knowledge, memory, personas, safety settings and status.

Keys are plain strings: a guild id (or DM_GUILD), and a channel id (a thread is its own channel).
Every blocking call (PDF reading, embeddings, Chroma, SQLite) runs in a thread here, off the event loop;
the model runs on the pipeline's own worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterable

from bot.config import Config
from bot.cooldown import Cooldown
from bot.memory import Exchange
from bot.pipeline import Author, Event, Pipeline
from bot.safety.settings import GuildSettings, Refusal
from knowledge.base import IngestResult, Passage, Progress
from knowledge.pdf import too_large_reason
from knowledge.store import Document

log = logging.getLogger(__name__)

DM_GUILD = "direct-messages"  # the "server" of direct messages: it has no documents


@dataclass(frozen=True)
class Status:
    model: str
    gpu_layers: str
    context_tokens: int
    queue_length: int
    documents: int
    chunks: int
    channel_exchanges: int
    memory_mb: float


class Assistant:
    def __init__(self, config: Config, pipeline: Pipeline):
        self.config = config
        self.pipeline = pipeline
        self.knowledge = pipeline.knowledge
        self.memory = pipeline.memory
        self.cooldown = Cooldown(config.discord.cooldown_s)

    @classmethod
    def start(cls, config: Config) -> Assistant:
        """Load the model, the embedder and the stores named in the config (slow: seconds to minutes)."""
        from bot.console import build_pipeline

        return cls(config, build_pipeline(config))

    def close(self) -> None:
        self.pipeline.close()

    # --- answers ---------------------------------------------------------------------------

    def answer(self, guild: str, channel: str, author_id: str, author_name: str, text: str) -> AsyncIterator[Event]:
        return self.pipeline.answer(guild, channel, Author(author_id, author_name), text)

    # --- knowledge -------------------------------------------------------------------------

    def may_add_knowledge(self, manages_server: bool, roles: Iterable[tuple[str, str]]) -> bool:
        """Manage Server, or one of discord.kb_roles (given as (id, name) pairs of the member's roles)."""
        allowed = set(self.config.discord.kb_roles)
        return manages_server or any(role_id in allowed or name in allowed for role_id, name in roles)

    def size_refusal(self, size: int) -> str | None:
        """Why a file of this many bytes is refused before downloading it, or None."""
        return too_large_reason(size, self.knowledge.max_bytes) if size > self.knowledge.max_bytes else None

    async def ingest(self, guild: str, name: str, data: bytes, progress: Progress | None = None) -> IngestResult:
        return await asyncio.to_thread(self.knowledge.ingest, guild, name, data, progress)

    async def documents(self, guild: str) -> list[Document]:
        return await asyncio.to_thread(self.knowledge.documents, guild)

    async def remove(self, guild: str, name: str) -> Document | None:
        return await asyncio.to_thread(self.knowledge.remove, guild, name)

    async def search(self, guild: str, query: str) -> list[Passage]:
        return await asyncio.to_thread(self.knowledge.search, guild, query)

    # --- memory and persona ----------------------------------------------------------------

    async def history(self, channel: str, limit: int) -> list[Exchange]:
        return await asyncio.to_thread(self.memory.show, channel, limit)

    async def forget(self, channel: str) -> int:
        return await asyncio.to_thread(self.memory.reset, channel)

    async def export(self, channel: str) -> str:
        return await asyncio.to_thread(self.memory.export_markdown, channel)

    async def set_persona(self, channel: str, text: str) -> None:
        await self.pipeline.set_persona(channel, text)

    async def persona(self, channel: str) -> tuple[str, bool]:
        return await self.pipeline.persona(channel)

    async def reset_persona(self, channel: str) -> bool:
        return await self.pipeline.reset_persona(channel)

    # --- safety (bot.safety.SafetyFilter; each setter raises ValueError with a one-line reason) ---

    def _safety(self):
        if self.pipeline.safety is None:
            raise ValueError("The safety filter is not enabled on this bot.")
        return self.pipeline.safety

    @property
    def default_refusal(self) -> str:
        return self.config.safety.refusal

    @property
    def guard(self) -> str:
        """The guard model (layer 3) and its latency so far, or "" when the bot has none."""
        guard = getattr(self.pipeline.safety, "guard", None)
        if guard is None:
            return ""
        calls, p50, p95 = guard.latency()
        return guard.describe() + (f", p50 {p50:.0f} ms, p95 {p95:.0f} ms over the last {calls} checks" if calls else "")

    def on_refusal(self, callback: Callable[[Refusal], None] | None) -> None:
        """Call `callback` (from a worker thread) with every refusal; None stops it."""
        if self.pipeline.safety is not None:
            self.pipeline.safety.on_refusal = callback

    async def safety_settings(self, guild: str) -> GuildSettings:
        return await asyncio.to_thread(self._safety().settings, guild)

    async def set_safety_level(self, guild: str, level: str) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_level, guild, level)

    async def set_safety_layer(self, guild: str, layer: str, on: bool) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_layer, guild, layer, on)

    async def set_safety_category(self, guild: str, category: str, on: bool) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_category, guild, category, on)

    async def block(self, guild: str, term: str = "", pattern: str = "") -> GuildSettings:
        return await asyncio.to_thread(self._safety().block, guild, term, pattern)

    async def unblock(self, guild: str, term_or_pattern: str) -> bool:
        return await asyncio.to_thread(self._safety().unblock, guild, term_or_pattern)

    async def set_refusal(self, guild: str, text: str) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_refusal, guild, text)

    async def set_log_channel(self, guild: str, channel: str) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_log_channel, guild, channel)

    async def set_log_text(self, guild: str, on: bool) -> GuildSettings:
        return await asyncio.to_thread(self._safety().set_log_text, guild, on)

    async def refusals(self, guild: str, limit: int) -> list[Refusal]:
        return await asyncio.to_thread(self._safety().refusals, guild, limit)

    # --- status ----------------------------------------------------------------------------

    async def status(self, guild: str, channel: str) -> Status:
        def read() -> Status:
            llm = self.pipeline.llm
            docs = self.knowledge.documents(guild)
            files = [self.config.memory_path, self.config.memory_path.with_name(self.config.memory_path.name + "-wal")]
            return Status(
                model=llm.describe(), gpu_layers=_gpu_layers(llm), context_tokens=llm.n_ctx,
                queue_length=self.pipeline.queue_length, documents=len(docs), chunks=sum(d.chunks for d in docs),
                channel_exchanges=self.memory.count(channel),
                memory_mb=sum(f.stat().st_size for f in files if f.exists()) / 1e6)

        return await asyncio.to_thread(read)


def _gpu_layers(llm) -> str:
    """"33 of 33" for llama.cpp in this process; a model server decides for itself."""
    if not hasattr(llm, "layers_on_gpu"):
        return "decided by the model server"
    return f"{llm.layers_on_gpu} of {llm.layers}"
