"""pytest fixtures: ``fake_discord`` (a started FakeDiscord that discord.py points at) and ``run_bot``.

    async def test_x(fake_discord, run_bot):
        async with run_bot(MyBot()) as bot:      # started, READY, guilds received
            await fake_discord.user_message("hi")
            reply = await fake_discord.wait_for_message(fake_discord.channel)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import AsyncIterator, TypeVar

import discord
import pytest
import yarl

from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


@pytest.fixture
async def fake_discord(monkeypatch) -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord; discord.py's REST base and gateway URL point at it for this test.

    After the test it fails the test if the bot hit a route the fake does not serve or if any
    payload broke Discord's OpenAPI spec (see ``FakeDiscord.assert_clean``).
    """
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    yield fake
    await fake.stop()
    fake.assert_clean()


@pytest.fixture
def run_bot(fake_discord: FakeDiscord):
    """``async with run_bot(bot) as bot:`` runs a Client/Bot against the fake until the block ends."""
    return functools.partial(running, fake_discord)


async def _no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
    """discord.py sleeps 5 s before a re-IDENTIFY; tests need not."""


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: ClientT, *, timeout: float = 5.0) -> AsyncIterator[ClientT]:
    """Start ``bot`` against ``fake`` as a task, wait until it is ready, and close it cleanly on exit."""
    bot._connection.guild_ready_timeout = 0.05  # on_ready fires this long after the last GUILD_CREATE (default 2 s)
    bot.before_identify_hook = _no_identify_delay
    task = asyncio.create_task(bot.start(fake.token), name=f"{type(bot).__name__}.start")
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not bot.is_ready():  # wait_until_ready() cannot be awaited before login
            if task.done():
                task.result()  # raises the bot's startup error
                raise RuntimeError("bot.start() returned before the bot was ready")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"bot not ready after {timeout}s; unhandled routes: {fake.unhandled}")
            await asyncio.sleep(0.01)
        yield bot
    finally:
        await bot.close()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            raise RuntimeError(f"bot did not stop within {timeout}s of close()")
    task.result()  # surface an error the bot's run ended with
