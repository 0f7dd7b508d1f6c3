"""Mentions of the bot, and replies to its messages: answered with the channel's memory and the server's PDFs.

One reply to the question, edited as the answer streams (at most every discord.edit_interval_s),
continued in further replies past 2,000 characters, sources at the end. Generated text never pings:
every message is sent with allowed_mentions none.
"""

from __future__ import annotations

import logging
import math
import re
import time

import discord
from discord.ext import commands

from bot.assistant import DM_GUILD, Assistant
from bot.pipeline import Done, Piece, Queued
from bot.replies import final_text, queued_text, split_message, streaming_text

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
FAILURE_REPLY = "Sorry, something went wrong on my side. Please try again in a moment."
UNREADABLE_REPLY = ("I can't read replies that don't ping me. Keep the reply's @ mention on, "
                    "or mention me in your message.")


class Chat(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.assistant: Assistant = bot.assistant
        self.settings = bot.config.discord

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self._addressed(message):
            return
        try:
            await self._handle(message)
        except Exception:
            log.exception("answering message %s in channel %s failed", message.id, message.channel.id)
            try:
                await message.channel.send(FAILURE_REPLY, reference=message.to_reference(fail_if_not_exists=False))
            except discord.HTTPException:
                log.warning("could not tell the user that answering failed")

    def _addressed(self, message: discord.Message) -> bool:
        """A person mentioned the bot or replied to it (in a server), or wrote to it directly (if allowed)."""
        if message.author.bot:  # other bots, and this bot itself
            return False
        if message.guild is None:
            return self.settings.allow_dms
        return self.bot.user in message.mentions or self._replies_to_bot(message)

    def _replies_to_bot(self, message: discord.Message) -> bool:
        replied = message.reference.resolved if message.reference else None
        return isinstance(replied, discord.Message) and replied.author.id == self.bot.user.id

    async def _handle(self, message: discord.Message) -> None:
        text = re.sub(rf"<@!?{self.bot.user.id}>", "", message.content).strip()
        if message.attachments:  # a message with files adds documents; its text is not a question
            if message.guild is None:
                await message.reply("Documents can only be added in a server, not in direct messages.")
            else:
                await self.bot.get_cog("Knowledge").add_attachments(message)
            return
        if not text and message.guild is not None and self.bot.user not in message.mentions:
            await message.reply(UNREADABLE_REPLY, mention_author=False)  # no message-content intent
            return
        if text and (wait := self.assistant.cooldown.wait_left(str(message.author.id))):
            await message.reply(f"Slow down a little: you can ask me again in {math.ceil(wait)} s.",
                                mention_author=False)
            return
        await self._answer(message, text)

    async def _answer(self, message: discord.Message, text: str) -> None:
        guild = str(message.guild.id) if message.guild else DM_GUILD
        reply = StreamedReply(message, self.settings.edit_interval_s)
        answer = ""
        async with message.channel.typing():
            events = self.assistant.answer(guild, str(message.channel.id), str(message.author.id),
                                           message.author.display_name, text)
            async for event in events:
                if isinstance(event, Queued):
                    await reply.show(queued_text(event.position), now=True)
                elif isinstance(event, Piece):
                    answer += event.text
                    await reply.show(streaming_text(answer))
                elif isinstance(event, Done):
                    await reply.show(final_text(event), now=True)


class StreamedReply:
    """The messages of one answer: replies to the question, edited in place as the text grows."""

    def __init__(self, question: discord.Message, interval: float):
        self.question = question
        self.interval = interval
        self.messages: list[discord.Message] = []
        self.shown: list[str] = []
        self._reference = question.to_reference(fail_if_not_exists=False)  # still answered if the question is deleted
        self._last_update = -math.inf

    async def show(self, text: str, *, now: bool = False) -> None:
        """Make the messages say `text`; skipped (unless `now`) if the last update is too recent."""
        if not now and time.monotonic() - self._last_update < self.interval:
            return
        chunks = split_message(text)
        for i, chunk in enumerate(chunks):
            if i == len(self.messages):
                self.messages.append(await self.question.channel.send(chunk, reference=self._reference,
                                                                      allowed_mentions=NO_PINGS))
                self.shown.append(chunk)
            elif self.shown[i] != chunk:
                self.messages[i] = await self.messages[i].edit(content=chunk, allowed_mentions=NO_PINGS)
                self.shown[i] = chunk
        for extra in self.messages[len(chunks):]:  # the final text is shorter than what streamed
            await extra.delete()
        del self.messages[len(chunks):], self.shown[len(chunks):]
        self._last_update = time.monotonic()


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Chat(bot))
