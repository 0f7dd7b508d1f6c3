"""The Discord client: the one module of bot/ that knows discord.py.

It builds the bot (sharded when discord.shard_count is set), loads the cogs and syncs the slash
commands in setup_hook, and turns an unexpected slash-command failure into a short reply plus a logged
traceback. The cogs reach the service as `bot.assistant` and the settings as `bot.config`.
It also posts each safety refusal to the server's log channel (/safety log-channel), pinging nobody.
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import Assistant
from bot.config import Config
from bot.safety.settings import Refusal
from bot.safety.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

COGS = ("cogs.chat", "cogs.knowledge", "cogs.admin", "cogs.safety")
FAILURE_REPLY = "Sorry, that failed on my side. Please try again in a moment."


class _AssistantBot:
    """What both bot classes add to discord.py's: the assistant, the cogs, no prefix commands."""

    def __init__(self, config: Config, assistant: Assistant, **options):
        intents = discord.Intents.default()
        intents.message_content = config.discord.message_content_intent
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, intents=intents,
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.config = config
        self.assistant = assistant
        self._posts: set[asyncio.Task] = set()  # refusal posts under way (a task needs a reference)

    async def setup_hook(self) -> None:
        for cog in COGS:
            await self.load_extension(cog)
        self.tree.on_error = _on_command_error
        synced = await self.tree.sync()
        log.info("synced %d slash commands", len(synced))
        loop = asyncio.get_running_loop()
        self.assistant.on_refusal(lambda refusal: loop.call_soon_threadsafe(self._post_refusal_soon, refusal))

    async def close(self) -> None:
        self.assistant.on_refusal(None)
        await super().close()

    def _post_refusal_soon(self, refusal: Refusal) -> None:
        if refusal.log_channel and not self.is_closed():
            task = asyncio.create_task(self._post_refusal(refusal), name="post refusal")
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)

    async def _post_refusal(self, refusal: Refusal) -> None:
        """Post the refusal in its server's log channel; a missing or foreign channel is logged, not raised."""
        channel = self.get_channel(int(refusal.log_channel)) if refusal.log_channel.isdigit() else None
        if channel is None or str(getattr(getattr(channel, "guild", None), "id", "")) != refusal.guild:
            log.warning("refusal log channel %s of guild %s not found", refusal.log_channel, refusal.guild)
            return
        try:
            await channel.send(refusal_post(refusal), allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as e:
            log.warning("could not post a refusal to channel %s: %s", refusal.log_channel, e)

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the chat cog answers mentions and replies."""

    async def on_ready(self) -> None:
        log.info("connected as %s to %d servers", self.user, len(self.guilds))


class AssistantBot(_AssistantBot, commands.Bot):
    pass


class ShardedAssistantBot(_AssistantBot, commands.AutoShardedBot):
    pass


def build_bot(config: Config, assistant: Assistant) -> commands.Bot:
    shards = config.discord.shard_count
    if shards == 0:
        return AssistantBot(config, assistant)
    return ShardedAssistantBot(config, assistant, shard_count=None if shards == -1 else shards,
                               shard_ids=[int(i) for i in config.discord.shard_ids] or None)


def run(config: Config) -> None:
    """Start the bot and block until it stops. The token is passed to discord.py, never logged."""
    assistant = Assistant.start(config)
    try:
        build_bot(config, assistant).run(config.discord_token, log_handler=None)
    finally:
        assistant.close()


def refusal_post(r: Refusal) -> str:
    """What moderators see: who, where, why; the text only when the server keeps it (/safety log-text)."""
    stage = "question" if r.stage == "input" else "answer"
    post = (f"🛡️ Refused a {stage} from <@{r.user_id}> in <#{r.channel}>: **{r.category}** "
            f"({CATEGORIES.get(r.category, '?')}), layer {r.layer}, stage {r.stage}")
    if r.text:
        text = " ".join(r.text.split())
        post += "\n> " + (text if len(text) <= 1500 else text[:1499] + "…")
    return post


async def _on_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    if isinstance(error, app_commands.CheckFailure) and interaction.response.is_done():
        return  # the check told the user why
    command = interaction.command.qualified_name if interaction.command else "?"
    log.error("/%s failed in channel %s", command, interaction.channel_id, exc_info=error)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(FAILURE_REPLY, ephemeral=True)
        else:
            await interaction.response.send_message(FAILURE_REPLY, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user that /%s failed", command)
