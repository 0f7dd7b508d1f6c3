"""Helpers the cogs share: who manages the server, and answering an interaction whatever its state."""

from __future__ import annotations

import discord

NEEDS_MANAGER = "You need the **Manage Server** permission for this."


def manages_server(interaction: discord.Interaction) -> bool:
    """Checked inside admin commands too: a server can override the commands' default permissions."""
    return interaction.guild is not None and interaction.permissions.manage_guild


async def require_manager(interaction: discord.Interaction) -> bool:
    """Whether the user manages the server; if not, they are told so (only they see it)."""
    if manages_server(interaction):
        return True
    await respond(interaction, NEEDS_MANAGER, ephemeral=True)
    return False


def member_roles(member: discord.abc.User) -> list[tuple[str, str]]:
    return [(str(role.id), role.name) for role in getattr(member, "roles", [])]


async def respond(interaction: discord.Interaction, content: str, *, ephemeral: bool = False, **options) -> None:
    """The reply to an interaction: the first response, or a follow-up once deferred."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=ephemeral, **options)
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **options)


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
