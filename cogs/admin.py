"""/memory show|reset|export and /persona set|show|reset (per channel; Manage Server), and /status."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import Assistant
from bot.replies import MESSAGE_LIMIT
from cogs.common import require_manager, respond, shorten

MANAGERS = discord.Permissions(manage_guild=True)


class Admin(commands.Cog):
    memory = app_commands.Group(name="memory", description="This channel's conversation memory (Manage Server)",
                                guild_only=True, default_permissions=MANAGERS)
    persona = app_commands.Group(name="persona", description="How the bot behaves in this channel (Manage Server)",
                                 guild_only=True, default_permissions=MANAGERS)

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.assistant: Assistant = bot.assistant

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Servers can let anyone run these commands; the bot still requires Manage Server (not for /status)."""
        group = interaction.command.root_parent if interaction.command else None
        if group is not None and group.name in ("memory", "persona"):
            return await require_manager(interaction)
        return True

    # --- /memory ------------------------------------------------------------------------------

    @memory.command(name="show", description="Show the last exchanges the bot remembers in this channel")
    @app_commands.describe(count="How many exchanges (default 5)")
    async def memory_show(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 20] = 5) -> None:
        exchanges = await self.assistant.history(str(interaction.channel_id), count)
        if not exchanges:
            await respond(interaction, "I remember nothing in this channel yet.", ephemeral=True)
            return
        room = (MESSAGE_LIMIT - 50) // len(exchanges) - 30
        lines = [f"**{discord.utils.escape_markdown(e.author_name)}**: {shorten(e.question, room // 3)}\n"
                 f"→ {shorten(e.answer, room * 2 // 3) if e.answer else f'_({e.status})_'}" for e in exchanges]
        await respond(interaction, "\n".join(lines), ephemeral=True)

    @memory.command(name="reset", description="Make the bot forget this channel's conversation")
    async def memory_reset(self, interaction: discord.Interaction) -> None:
        forgotten = await self.assistant.forget(str(interaction.channel_id))
        await respond(interaction, f"🧹 Forgot {forgotten} exchanges in this channel.")

    @memory.command(name="export", description="Download this channel's conversation as a Markdown file")
    async def memory_export(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        markdown = await self.assistant.export(str(interaction.channel_id))
        file = discord.File(io.BytesIO(markdown.encode()), filename=f"memory-{interaction.channel_id}.md")
        await respond(interaction, "This channel's conversation:", ephemeral=True, file=file)

    # --- /persona -----------------------------------------------------------------------------

    @persona.command(name="set", description="Set the instructions the bot follows in this channel")
    @app_commands.describe(text="The persona, e.g. 'You are the HR helpdesk; answer briefly and formally.'")
    async def persona_set(self, interaction: discord.Interaction, text: str) -> None:
        try:
            await self.assistant.set_persona(str(interaction.channel_id), text)
        except ValueError as e:
            await respond(interaction, str(e), ephemeral=True)
            return
        await respond(interaction, "🎭 Persona set for this channel.")

    @persona.command(name="show", description="Show the persona the bot uses in this channel")
    async def persona_show(self, interaction: discord.Interaction) -> None:
        text, own = await self.assistant.persona(str(interaction.channel_id))
        label = "This channel's persona" if own else "The default persona (none set for this channel)"
        await respond(interaction, f"{label}:\n>>> {shorten(text, MESSAGE_LIMIT - 100)}", ephemeral=True)

    @persona.command(name="reset", description="Go back to the default persona in this channel")
    async def persona_reset(self, interaction: discord.Interaction) -> None:
        removed = await self.assistant.reset_persona(str(interaction.channel_id))
        await respond(interaction, "🎭 Back to the default persona." if removed else "This channel already uses the default persona.")

    # --- /status ------------------------------------------------------------------------------

    @app_commands.command(name="status", description="Model, queue, documents and memory of the bot")
    @app_commands.guild_only()
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        s = await self.assistant.status(str(interaction.guild_id), str(interaction.channel_id))
        await respond(interaction, "\n".join([
            f"**Model**: {s.model}",
            f"**Layers on the GPU**: {s.gpu_layers}",
            f"**Context**: {s.context_tokens} tokens",
            f"**Queue**: {s.queue_length} questions being answered or waiting",
            f"**This server's documents**: {s.documents} ({s.chunks} passages)",
            f"**Memory**: {s.channel_exchanges} exchanges in this channel; {s.memory_mb:.1f} MB in all",
        ]), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
