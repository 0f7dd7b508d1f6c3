"""End to end: /safety and the moderators' log channel, with the real bot, SmolLM2 and safety classifier
against the fake Discord API. Assertions are on structure and stored state, never on what the model says."""

from __future__ import annotations

import contextlib

import pytest

from bot.assistant import Assistant
from bot.config import load_config
from bot.discord_app import build_bot
from bot.memory import Memory
from bot.pipeline import Pipeline
from bot.safety import GuildSettings, SafetyFilter
from bot.safety.classifier import Classifier
from bot.safety.settings import SettingsStore
from cogs.common import NEEDS_MANAGER
from tests.test_discord_bot import ENV, Recording, answer_to, assert_nothing_pings, command

REFUSAL = "Not here, sorry."


@pytest.fixture(scope="session")
def classifier():
    c = Classifier()
    c.load()
    return c


@pytest.fixture
async def bot(tmp_path, llm, embedder, classifier, fake_discord, run_bot):
    from knowledge.base import KnowledgeBase

    config = load_config(None, env=ENV, data_dir=tmp_path / "data")
    safety = SafetyFilter(config.safety, SettingsStore(tmp_path / "safety.sqlite3", GuildSettings()), classifier)
    assistant = Assistant(config, Pipeline(config, Recording(llm), KnowledgeBase(config, embedder),
                                           Memory(config.memory_path), safety))
    with contextlib.closing(assistant):
        async with run_bot(build_bot(config, assistant)) as bot:
            yield bot


async def admin(fake, name, options=None):
    interaction = await command(fake, name, options, member=fake.admin)
    assert interaction.original.ephemeral, name
    return interaction.original.content


async def test_safety_needs_manage_server(fake_discord, bot):
    assert fake_discord.synced_command("safety")["default_member_permissions"] == "32"  # Manage Server
    guild = str(fake_discord.guild.id)
    for name, options in [("safety show", None), ("safety level", {"level": "off"}), ("safety block", {"term": "x"})]:
        refused = await command(fake_discord, name, options, member=fake_discord.member)
        assert refused.original.ephemeral and refused.original.content == NEEDS_MANAGER, name
    blocked = await admin(fake_discord, "safety block", {"term": "zeppelin"})
    assert blocked == "🚫 Blocked the term `zeppelin`."
    listed = await fake_discord.autocomplete("safety unblock", {"entry": "zep"}, focused="entry", member=fake_discord.member)
    await fake_discord.wait_for_response(listed)
    assert listed.choices == []  # autocomplete skips the cog check: it must not leak the list
    assert await bot.assistant.safety_settings(guild) == GuildSettings(blocked_terms=("zeppelin",))


async def test_blocked_term_is_refused_logged_and_level_off_answers(fake_discord, bot):
    mods = fake_discord.guild.channel("docs")
    assert await admin(fake_discord, "safety block", {"term": "zeppelin"}) == "🚫 Blocked the term `zeppelin`."
    assert await admin(fake_discord, "safety refusal", {"text": REFUSAL}) == "🛡️ Refusal text set."
    assert await admin(fake_discord, "safety log-channel", {"channel": mods}) == f"📋 Refusals are posted to <#{mods.id}>."

    asked = await fake_discord.user_message("Tell me about the Zeppelin.")
    [reply] = await answer_to(fake_discord, asked)
    assert reply.content == REFUSAL and bot.assistant.pipeline.llm.prompts == []  # nothing generated
    post = await fake_discord.wait_for_message(mods)
    assert post.content == (f"🛡️ Refused a question from <@{fake_discord.member.id}> in <#{fake_discord.channel.id}>: "
                            "**blocked** (A term or pattern this server's admins blocked), layer rules, stage input")
    assert post.bodies[0]["allowed_mentions"] == {"parse": []}

    assert await admin(fake_discord, "safety log-text", {"state": "on"}) == "📋 Message text in the log: **on**."
    asked = await fake_discord.user_message("And the zeppelin again?")
    await answer_to(fake_discord, asked)
    post = await fake_discord.wait_for_message(mods, predicate=lambda m: "again" in m.content)
    assert post.content.endswith(", layer rules, stage input\n> And the zeppelin again?"), post.content
    assert post.bodies[0]["allowed_mentions"] == {"parse": []}
    log = await admin(fake_discord, "safety log", {"count": 5})
    assert log.count("**blocked**") == 2 and "And the zeppelin again?" in log and f"<@{fake_discord.member.id}>" in log
    assert_nothing_pings(fake_discord)

    assert await admin(fake_discord, "safety level", {"level": "off"}) == "🛡️ Safety level: **off**."
    asked = await fake_discord.user_message("Tell me about the Zeppelin.")
    [reply] = await answer_to(fake_discord, asked)
    assert reply.content != REFUSAL and len(bot.assistant.pipeline.llm.prompts) == 1
    assert len([m for m in fake_discord.bot_messages if m.channel_id == mods.id]) == 2  # no post for an answer


async def test_show_autocomplete_and_bad_input_changes_nothing(fake_discord, bot):
    guild = str(fake_discord.guild.id)
    await admin(fake_discord, "safety block", {"pattern": r"ab+c"})
    await admin(fake_discord, "safety block", {"term": "Zeppelin"})
    assert await admin(fake_discord, "safety layer", {"layer": "classifier", "state": "off"}) == "🛡️ The classifier layer is **off**."
    assert await admin(fake_discord, "safety category", {"category": "S6", "state": "off"}) \
        == "🛡️ Category **S6** (Specialized advice) is **off**."
    before = await bot.assistant.safety_settings(guild)

    bad = await admin(fake_discord, "safety block", {"pattern": "(unclosed"})
    assert bad.startswith("Nothing changed: not a valid regular expression: ") and "\n" not in bad
    assert await admin(fake_discord, "safety block", {"term": "a", "pattern": "b"}) == "Give either a term or a pattern (one of them)."
    assert await admin(fake_discord, "safety block") == "Give either a term or a pattern (one of them)."
    assert (await admin(fake_discord, "safety refusal", {"text": "x" * 501})).startswith("Nothing changed: the refusal text is too long")
    assert await admin(fake_discord, "safety unblock", {"entry": "nothing"}) == "That is not blocked here; `/safety show` lists what is."
    assert (await admin(fake_discord, "safety layer", {"layer": "guard", "state": "on"})).startswith(
        "Nothing changed: this bot has no guard model: its owner can set safety.guard_model")
    assert await bot.assistant.safety_settings(guild) == before

    shown = await admin(fake_discord, "safety show")
    assert "**Level**: standard" in shown
    assert "**Layers**: rules on, classifier off, guard not available (no guard model configured)" in shown
    assert "**Disabled categories**: S6 (Specialized advice)" in shown and "**Blocked terms** (1): `Zeppelin`" in shown
    assert "**Blocked patterns** (1): `ab+c`" in shown and "**Log channel**: none" in shown
    assert "**Refusal text** (default): Sorry, I can't help" in shown

    choices = await fake_discord.autocomplete("safety unblock", {"entry": "ZEP"}, focused="entry", member=fake_discord.admin)
    await fake_discord.wait_for_response(choices)
    assert [c["value"] for c in choices.choices] == ["Zeppelin"]
    assert await admin(fake_discord, "safety unblock", {"entry": "Zeppelin"}) == "✅ Unblocked `Zeppelin`."
    assert await admin(fake_discord, "safety refusal") == "🛡️ Back to the default refusal text."
    assert await admin(fake_discord, "safety log-channel") == "📋 Refusals are no longer posted."
    assert (await bot.assistant.safety_settings(guild)).blocked_terms == ()
    assert await admin(fake_discord, "safety log") == "Nothing has been refused in this server."
