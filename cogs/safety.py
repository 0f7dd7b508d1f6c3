"""/safety show|level|layer|category|block|unblock|refusal|log-channel|log-text|log (Manage Server).

Every reply is ephemeral: blocked terms and refused messages are for the server's admins only.
Bad input gets a one-line reply and changes nothing (the service raises ValueError before storing).
"""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import Assistant
from bot.replies import MESSAGE_LIMIT
from bot.safety.settings import GuildSettings
from bot.safety.taxonomy import CATEGORIES
from cogs.common import manages_server, require_manager, respond, shorten

MANAGERS = discord.Permissions(manage_guild=True)
OnOff = Literal["on", "off"]
CATEGORY_CHOICES = [app_commands.Choice(name=shorten(f"{key}: {name}", 100), value=key) for key, name in CATEGORIES.items()]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _code(items: tuple[str, ...], room: int) -> str:
    return shorten(", ".join(f"`{i.replace('`', chr(0x2035))}`" for i in items), room) if items else "none"


def describe(s: GuildSettings, default_refusal: str, guard: str = "") -> str:
    """`guard`: the bot's guard model and its latency ("" when it has none)."""
    disabled = ", ".join(f"{c} ({CATEGORIES[c]})" for c in s.disabled_categories) or "none"
    return "\n".join([
        f"**Level**: {s.level}",
        f"**Layers**: rules {_on(s.rules)}, classifier {_on(s.classifier)}, "
        + (f"guard {_on(s.guard)} ({shorten(guard, 200)})" if guard else "guard not available (no guard model configured)"),
        f"**Disabled categories**: {shorten(disabled, 300)}",
        f"**Blocked terms** ({len(s.blocked_terms)}): {_code(s.blocked_terms, 450)}",
        f"**Blocked patterns** ({len(s.blocked_patterns)}): {_code(s.blocked_patterns, 450)}",
        f"**Log channel**: {f'<#{s.log_channel}>' if s.log_channel else 'none'}",
        f"**Message text in the log**: {_on(s.log_text)}",
        f"**Refusal text**{'' if s.refusal else ' (default)'}: {shorten(s.refusal or default_refusal, 500)}",
    ])


class Safety(commands.Cog):
    safety = app_commands.Group(name="safety", description="What the bot refuses in this server (Manage Server)",
                                guild_only=True, default_permissions=MANAGERS)

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self.assistant: Assistant = bot.assistant

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Servers can let anyone run /safety; the bot still requires Manage Server."""
        return await require_manager(interaction)

    async def _apply(self, interaction: discord.Interaction, change, done: str) -> None:
        """Await `change` (a service call); reply `done`, or the one-line reason it was refused."""
        try:
            await change
        except ValueError as e:
            await respond(interaction, f"Nothing changed: {e}", ephemeral=True)
            return
        await respond(interaction, done, ephemeral=True)

    def _guild(self, interaction: discord.Interaction) -> str:
        return str(interaction.guild_id)

    @safety.command(name="show", description="Show this server's safety settings")
    async def show(self, interaction: discord.Interaction) -> None:
        try:
            s = await self.assistant.safety_settings(self._guild(interaction))
        except ValueError as e:
            await respond(interaction, str(e), ephemeral=True)
            return
        await respond(interaction, describe(s, self.assistant.default_refusal, self.assistant.guard), ephemeral=True)

    @safety.command(name="level", description="How strict the filter is (off answers everything)")
    @app_commands.describe(level="off, standard or strict")
    async def level(self, interaction: discord.Interaction, level: Literal["off", "standard", "strict"]) -> None:
        await self._apply(interaction, self.assistant.set_safety_level(self._guild(interaction), level),
                          f"🛡️ Safety level: **{level}**.")

    @safety.command(name="layer", description="Turn a layer of the filter on or off")
    @app_commands.describe(layer="rules: blocked terms and jailbreaks; classifier: harmful intent; "
                                 "guard: the guard model, if the bot has one", state="on or off")
    async def layer(self, interaction: discord.Interaction, layer: Literal["rules", "classifier", "guard"],
                    state: OnOff) -> None:
        await self._apply(interaction, self.assistant.set_safety_layer(self._guild(interaction), layer, state == "on"),
                          f"🛡️ The {layer} layer is **{state}**.")

    @safety.command(name="category", description="Refuse (on) or allow (off) one category of harm")
    @app_commands.describe(category="The hazard category", state="on: refused; off: allowed")
    @app_commands.choices(category=CATEGORY_CHOICES)
    async def category(self, interaction: discord.Interaction, category: str, state: OnOff) -> None:
        await self._apply(interaction, self.assistant.set_safety_category(self._guild(interaction), category, state == "on"),
                          f"🛡️ Category **{category}** ({CATEGORIES.get(category, '?')}) is **{state}**.")

    @safety.command(name="block", description="Refuse messages containing a term or matching a pattern")
    @app_commands.describe(term="A whole word or phrase, any case", pattern="A regular expression")
    async def block(self, interaction: discord.Interaction, term: str = "", pattern: str = "") -> None:
        if bool(term.strip()) == bool(pattern):
            await respond(interaction, "Give either a term or a pattern (one of them).", ephemeral=True)
            return
        what = f"pattern `{pattern}`" if pattern else f"term `{' '.join(term.split())}`"
        await self._apply(interaction, self.assistant.block(self._guild(interaction), term, pattern),
                          f"🚫 Blocked the {shorten(what, 300)}.")

    @safety.command(name="unblock", description="Stop blocking a term or pattern")
    @app_commands.describe(entry="The blocked term or pattern")
    async def unblock(self, interaction: discord.Interaction, entry: str) -> None:
        try:
            removed = await self.assistant.unblock(self._guild(interaction), entry)
        except ValueError as e:
            await respond(interaction, str(e), ephemeral=True)
            return
        await respond(interaction, f"✅ Unblocked `{shorten(entry, 300)}`." if removed
                      else "That is not blocked here; `/safety show` lists what is.", ephemeral=True)

    @unblock.autocomplete("entry")
    async def complete_entry(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if not manages_server(interaction):  # autocomplete skips interaction_check; blocked terms are for admins
            return []
        s = await self.assistant.safety_settings(self._guild(interaction))
        matches = [e for e in s.blocked_terms + s.blocked_patterns if current.lower() in e.lower() and len(e) <= 100]
        return [app_commands.Choice(name=e, value=e) for e in matches[:25]]

    @safety.command(name="refusal", description="Set the reply to refused messages, or leave text out to reset it")
    @app_commands.describe(text="The reply; leave out to go back to the default")
    async def refusal(self, interaction: discord.Interaction, text: str = "") -> None:
        await self._apply(interaction, self.assistant.set_refusal(self._guild(interaction), text),
                          "🛡️ Refusal text set." if text.strip() else "🛡️ Back to the default refusal text.")

    @safety.command(name="log-channel", description="Post refusals to a channel for moderators, or leave out to stop")
    @app_commands.describe(channel="The moderators' channel; leave out to stop posting")
    async def log_channel(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None) -> None:
        await self._apply(interaction, self.assistant.set_log_channel(self._guild(interaction), str(channel.id) if channel else ""),
                          f"📋 Refusals are posted to <#{channel.id}>." if channel else "📋 Refusals are no longer posted.")

    @safety.command(name="log-text", description="Keep (on) or leave out (off) the refused message's text in the log")
    @app_commands.describe(state="on: the log and log channel show the text; off: only who, where and why")
    async def log_text(self, interaction: discord.Interaction, state: OnOff) -> None:
        await self._apply(interaction, self.assistant.set_log_text(self._guild(interaction), state == "on"),
                          f"📋 Message text in the log: **{state}**.")

    @safety.command(name="log", description="Show this server's last refusals")
    @app_commands.describe(count="How many (default 10)")
    async def log(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 20] = 10) -> None:
        try:
            refusals = await self.assistant.refusals(self._guild(interaction), count)
        except ValueError as e:
            await respond(interaction, str(e), ephemeral=True)
            return
        if not refusals:
            await respond(interaction, "Nothing has been refused in this server.", ephemeral=True)
            return
        lines = [f"<t:{int(r.at)}:R> **{r.category}** ({shorten(CATEGORIES.get(r.category, '?'), 30)}), {r.layer}, "
                 f"{r.stage}: <@{r.user_id}> in <#{r.channel}>" + (f"\n> {shorten(r.text, 200)}" if r.text else "")
                 for r in refusals]
        while len("\n".join(lines)) > MESSAGE_LIMIT:  # the oldest go first
            lines.pop()
        await respond(interaction, "\n".join(lines), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Safety(bot))
