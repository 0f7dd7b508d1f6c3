"""/kb add|list|remove|search, and PDFs attached to a mention (the chat cog hands them here)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import Assistant
from bot.replies import MESSAGE_LIMIT
from cogs.common import manages_server, member_roles, require_manager, respond, shorten

log = logging.getLogger(__name__)

Show = Callable[[str], Awaitable[object]]  # puts a progress text where the user sees it


class Knowledge(commands.Cog):
    kb = app_commands.Group(name="kb", description="This server's documents, which the bot answers from",
                            guild_only=True)

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.assistant: Assistant = bot.assistant

    def _may_add(self, member: discord.abc.User, manages: bool) -> bool:
        return self.assistant.may_add_knowledge(manages, member_roles(member))

    def _who_may_add(self) -> str:
        roles = self.bot.config.discord.kb_roles
        return "Manage Server" + (f" or one of the roles {', '.join(roles)}" if roles else "")

    # --- attachments on a mention ------------------------------------------------------------

    async def add_attachments(self, message: discord.Message) -> None:
        """Ingest the PDFs attached to a message that mentions the bot, one progress reply per file."""
        if not self._may_add(message.author, message.author.guild_permissions.manage_guild):
            await message.reply(f"Only members with {self._who_may_add()} may add documents; "
                                "I did not read the attachments.", mention_author=False)
            return
        for attachment in message.attachments:
            progress: discord.Message | None = None

            async def show(text: str) -> None:
                nonlocal progress
                if progress is None:
                    progress = await message.reply(text, mention_author=False)
                else:
                    progress = await progress.edit(content=text)

            await self.ingest(str(message.guild.id), attachment, show)

    async def ingest(self, guild: str, attachment: discord.Attachment, show: Show) -> None:
        """Check, download and ingest one attachment, showing progress and then the outcome."""
        name = discord.utils.escape_markdown(attachment.filename)
        if not _looks_like_pdf(attachment):
            await show(f"⚠️ **{name}** was not added: only PDF files go into the knowledge base.")
            return
        if reason := self.assistant.size_refusal(attachment.size):  # before downloading it
            await show(f"❌ **{name}** was not added: {reason}.")
            return
        await show(f"📥 Downloading **{name}**…")
        try:
            data = await attachment.read()
        except discord.HTTPException as e:
            log.warning("download of %s failed: %s", attachment.url, e)
            await show(f"❌ **{name}** was not added: I could not download it from Discord. Please try again.")
            return
        pages = [0, 0]  # written by the ingest thread, read here

        def progress(_file: str, done: int, total: int) -> None:
            pages[:] = done, total

        task = asyncio.ensure_future(self.assistant.ingest(guild, attachment.filename, data, progress))
        shown = None
        while not task.done():
            await asyncio.wait({task}, timeout=self.bot.config.discord.edit_interval_s)
            if not task.done() and pages[1] and tuple(pages) != shown:
                shown = tuple(pages)
                await show(f"⚙️ Reading **{name}**: page {pages[0]} of {pages[1]}…")
        result = task.result()
        if result.status == "refused":
            await show(f"❌ **{name}** was not added: {result.reason}.")
        elif result.status == "unchanged":
            await show(f"✅ **{name}** is already in the knowledge base, unchanged ({result.pages} pages).")
        else:
            await show(f"✅ **{name}** {result.status}: {result.pages} pages, {result.chunks} passages, "
                       f"{result.seconds:.1f} s.")

    # --- slash commands ------------------------------------------------------------------------

    @kb.command(name="add", description="Add a PDF to this server's knowledge base")
    @app_commands.describe(file="The PDF to add; one with the same name is replaced")
    async def add(self, interaction: discord.Interaction, file: discord.Attachment) -> None:
        if not self._may_add(interaction.user, manages_server(interaction)):
            await respond(interaction, f"Only members with {self._who_may_add()} may add documents.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self.ingest(str(interaction.guild_id), file,
                          lambda text: interaction.edit_original_response(content=text))

    @kb.command(name="list", description="List the documents in this server's knowledge base")
    async def list_documents(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        docs = await self.assistant.documents(str(interaction.guild_id))
        if not docs:
            await respond(interaction, "The knowledge base is empty. Add PDFs with `/kb add`.", ephemeral=True)
            return
        lines = [f"**{len(docs)} documents**, {sum(d.chunks for d in docs)} passages:"]
        for i, d in enumerate(docs):
            line = f"• {discord.utils.escape_markdown(d.name)}: {d.pages} pages, {d.chunks} passages"
            if sum(map(len, lines)) + len(lines) + len(line) > MESSAGE_LIMIT - 40:
                lines.append(f"…and {len(docs) - i} more.")
                break
            lines.append(line)
        await respond(interaction, "\n".join(lines), ephemeral=True)

    @kb.command(name="remove", description="Remove a document from this server's knowledge base (Manage Server)")
    @app_commands.describe(name="The file name, as /kb list shows it")
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        if not await require_manager(interaction):
            return
        await interaction.response.defer(thinking=True)
        removed = await self.assistant.remove(str(interaction.guild_id), name)
        shown = discord.utils.escape_markdown(name)
        if removed is None:
            await respond(interaction, f"There is no document named **{shown}**; see `/kb list`.")
        else:
            await respond(interaction, f"🗑️ Removed **{shown}** ({removed.chunks} passages).")

    @remove.autocomplete("name")
    async def complete_name(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        docs = await self.assistant.documents(str(interaction.guild_id))
        matches = [d.name for d in docs if current.lower() in d.name.lower()]
        return [app_commands.Choice(name=n[:100], value=n) for n in matches[:25]]

    @kb.command(name="search", description="Show the passages the bot would read for a question")
    @app_commands.describe(query="A question or a few keywords")
    async def search(self, interaction: discord.Interaction, query: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        passages = await self.assistant.search(str(interaction.guild_id), query)
        if not passages:
            await respond(interaction, "Nothing in this server's documents matches.", ephemeral=True)
            return
        room = (MESSAGE_LIMIT - 100) // len(passages) - 40
        lines = [f"**[{i}] {discord.utils.escape_markdown(p.file)} p. {p.page}**\n> {shorten(p.text, room)}"
                 for i, p in enumerate(passages, 1)]
        await respond(interaction, "\n".join(lines), ephemeral=True)


def _looks_like_pdf(attachment: discord.Attachment) -> bool:
    return attachment.filename.lower().endswith(".pdf") or (attachment.content_type or "").startswith("application/pdf")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Knowledge(bot))
