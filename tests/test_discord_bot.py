"""End to end: the real bot (discord.py client, cogs, pipeline, SmolLM2, MiniLM, Chroma, SQLite) against
the fake Discord API on 127.0.0.1. Assertions are on structure (messages, edits, sources, prompts,
stored state), never on what the tiny model happens to say."""

from __future__ import annotations

import contextlib
import logging
import re

import discord
import pytest

from bot.assistant import Assistant
from bot.discord_app import FAILURE_REPLY, ShardedAssistantBot, build_bot
from bot.memory import Memory
from bot.pipeline import ERROR_REPLY, Pipeline
from bot.replies import CURSOR
from cogs.common import NEEDS_MANAGER
from tests.conftest import ENGINE_ENV, smollm2_path
from tests.fake_discord import Attachment
from tests.fake_discord.payloads import EVERYONE_PERMISSIONS, Role
from tests.pdfs import encrypt, make_pdf

HANDBOOK = make_pdf(["Annual leave: every employee has 25 days of paid annual leave per year.",
                     "Remote work: staff may work from home two days per week."])
GARDEN = make_pdf(["Garden rules: water the tomatoes every morning and prune roses in March."])
ENV = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_DISCORD_EDIT_INTERVAL_S": "0.1",
       "BOT_DISCORD_COOLDOWN_S": "0", "BOT_KNOWLEDGE_MAX_FILE_MB": "1"}
ANSWER_TIMEOUT = 30


class Recording:
    """The real model, noting every prompt it answers; `prefix` is put before its answer (to test hostile output)."""

    def __init__(self, llm, prefix: str = ""):
        self.llm, self.prefix, self.prompts = llm, prefix, []

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def stream(self, messages, max_tokens, cancel=None, **options):
        self.prompts.append("\n".join(m["content"] for m in messages))
        if self.prefix:
            yield self.prefix
        yield from self.llm.stream(messages, max_tokens, cancel, **options)


@pytest.fixture
def second_guild(fake_discord):
    return fake_discord.add_guild("Second Guild")  # before the bot connects, so it gets its GUILD_CREATE


@pytest.fixture
def launch(tmp_path, llm, embedder, fake_discord, run_bot, second_guild):
    """`async with launch(**env) as bot:` a bot on a fresh (or, called again, the same) data dir."""
    from bot.config import load_config
    from knowledge.base import KnowledgeBase

    started = []

    @contextlib.asynccontextmanager
    async def start(prefix: str = "", **env):
        config = load_config(None, env={**ENV, **env}, data_dir=tmp_path / "data")
        knowledge = KnowledgeBase(config, embedder)
        assistant = Assistant(config, Pipeline(config, Recording(llm, prefix), knowledge, Memory(config.memory_path)))
        started.append(assistant)
        async with run_bot(build_bot(config, assistant)) as bot:
            yield bot
        assistant.close()

    yield start
    for assistant in started:
        assistant.close()


@pytest.fixture
async def bot(launch):
    async with launch() as bot:
        yield bot


def answer_messages(fake, asked):
    return [m for m in fake.bot_messages if m.reply_to == int(asked["id"]) and not m.deleted]


async def answer_to(fake, asked, timeout=ANSWER_TIMEOUT):
    """The messages of the finished answer to `asked` (finished: the last one no longer ends in the cursor)."""
    def finished():
        messages = answer_messages(fake, asked)
        if messages and not messages[-1].content.endswith(CURSOR) and not messages[-1].content.startswith("⏳"):
            return messages
        return None

    return await fake.wait_until(finished, timeout=timeout, what=f"answer to {asked['content']!r}")


def assert_nothing_pings(fake):
    """Every message body the bot sent with text allows no @everyone/@here, role, user or reply ping."""
    for message in fake.bot_messages:
        for body in message.bodies:
            if "content" in body:
                allowed = body.get("allowed_mentions")
                assert allowed and allowed["parse"] == [] and set(allowed) <= {"parse", "replied_user"} \
                    and not allowed.get("replied_user"), (message.content, body)


async def command(fake, name, options=None, **kw):
    interaction = await fake.slash_command(name, options, **kw)
    await fake.wait_for_response(interaction)
    return interaction


async def final_reply(fake, interaction, timeout=ANSWER_TIMEOUT):
    """The text a command ends with: its first follow-up, or its response once no longer "thinking"."""
    def done():
        if interaction.followups:
            return interaction.followups[0]
        original = interaction.original
        return original if original and not original.loading and not original.content.startswith(("📥", "⚙️")) else None

    return await fake.wait_until(done, timeout=timeout, what=f"reply to /{interaction.payload['data']['name']}")


async def test_mention_gets_a_streamed_reply_with_sources(fake_discord, bot):
    await bot.assistant.ingest(str(fake_discord.guild.id), "handbook.pdf", HANDBOOK)
    asked = await fake_discord.user_message("How many days of annual leave do employees get?")
    [reply] = await answer_to(fake_discord, asked)
    assert reply.via == "channel" and reply.channel_id == fake_discord.channel.id
    assert reply.edits >= 1 and reply.bodies[0]["content"].endswith(CURSOR)  # streamed, then completed
    answer, _, sources = reply.content.partition("\n\n-# Sources")
    assert answer.strip() and "handbook.pdf p. 1" in sources
    assert fake_discord.requests_to("POST", "/channels/{channel_id}/typing")
    edits = fake_discord.requests_to("PATCH", f"/channels/{fake_discord.channel.id}/messages/{reply.id}")
    gaps = [b.time - a.time for a, b in zip(edits, edits[1:-1])]  # the last edit (the final text) is not throttled
    assert all(gap >= 0.09 for gap in gaps), gaps
    assert_nothing_pings(fake_discord)
    await fake_discord.user_message("nobody asked the bot", mentions_bot=False)
    await fake_discord.dispatch("MESSAGE_CREATE", {**fake_discord.messages[reply.id], "id": str(fake_discord.ids.next()),
                                                   "mentions": [fake_discord.bot_user.payload()]}, fake_discord.guild.id)
    asked = await fake_discord.user_message("Remote work?")
    await answer_to(fake_discord, asked)
    assert len(bot.assistant.pipeline.llm.prompts) == 2  # neither a plain message nor its own message was answered


async def test_channels_and_threads_keep_separate_memories_and_replies_continue(fake_discord, bot):
    docs = fake_discord.guild.channel("docs")
    for text, channel in [("Tell me about zebras.", fake_discord.channel), ("Tell me about quokkas.", docs),
                          ("Tell me about narwhals.", fake_discord.thread)]:
        await answer_to(fake_discord, await fake_discord.user_message(text, channel=channel))
    [first_answer] = [m for m in fake_discord.bot_messages if m.channel_id == fake_discord.channel.id]
    follow_up = await fake_discord.user_message("And what do they eat?", reply_to=first_answer)
    await answer_to(fake_discord, follow_up)
    prompts = bot.assistant.pipeline.llm.prompts
    assert "zebras" not in prompts[1] and "zebras" not in prompts[2] and "quokkas" not in prompts[2]
    assert "zebras" in prompts[3] and "quokkas" not in prompts[3] and "narwhals" not in prompts[3]
    memory = bot.assistant.memory
    assert [e.question for e in memory.show(str(fake_discord.channel.id))] == ["Tell me about zebras.", "And what do they eat?"]
    assert [e.question for e in memory.show(str(fake_discord.thread.id))] == ["Tell me about narwhals."]


async def test_pdfs_from_a_mention_and_kb_add_are_searchable_in_that_server_only(fake_discord, bot, second_guild):
    asked = await fake_discord.user_message("please add this", author=fake_discord.admin,
                                            attachments=[Attachment("handbook.pdf", HANDBOOK, "application/pdf")])
    progress = await fake_discord.wait_for_message(predicate=lambda m: m.content.startswith("✅"), timeout=ANSWER_TIMEOUT)
    assert progress.reply_to == int(asked["id"]) and progress.edits >= 1
    assert progress.bodies[0]["content"] == "📥 Downloading **handbook.pdf**…"
    assert progress.content.startswith("✅ **handbook.pdf** added: 2 pages, 2 passages, ")
    added = await command(fake_discord, "kb add", {"file": Attachment("garden.pdf", GARDEN, "application/pdf")},
                          member=fake_discord.admin)
    done = await final_reply(fake_discord, added)
    assert added.callback_type == 5 and done.content.startswith("✅ **garden.pdf** added: 1 pages, 1 passages")

    listing = await final_reply(fake_discord, await command(fake_discord, "kb list"))
    assert listing.ephemeral and "handbook.pdf: 2 pages" in listing.content and "garden.pdf: 1 pages" in listing.content
    found = await final_reply(fake_discord, await command(fake_discord, "kb search", {"query": "when to prune roses"}))
    assert "garden.pdf p. 1" in found.content and "prune roses" in found.content
    other = second_guild.channel("general")
    elsewhere = await final_reply(fake_discord, await command(fake_discord, "kb search", {"query": "when to prune roses"},
                                                              channel=other))
    assert elsewhere.content == "Nothing in this server's documents matches."
    asked = await fake_discord.user_message("How many days of annual leave?", channel=other)
    [reply] = await answer_to(fake_discord, asked)
    assert "No passage of this server's documents matched" in reply.content
    assert bot.assistant.knowledge.search(str(second_guild.id), "annual leave") == []

    choices = await fake_discord.autocomplete("kb remove", {"name": "gard"}, focused="name", member=fake_discord.admin)
    await fake_discord.wait_for_response(choices)
    assert [c["value"] for c in choices.choices] == ["garden.pdf"]
    removed = await final_reply(fake_discord, await command(fake_discord, "kb remove", {"name": "garden.pdf"},
                                                            member=fake_discord.admin))
    assert removed.content == "🗑️ Removed **garden.pdf** (1 passages)."
    assert [d.name for d in bot.assistant.knowledge.documents(str(fake_discord.guild.id))] == ["handbook.pdf"]
    assert_nothing_pings(fake_discord)


async def test_commands_are_described_and_admin_commands_refuse_members(fake_discord, bot):
    for name in ("kb add", "kb list", "kb remove", "kb search", "memory show", "memory reset", "memory export",
                 "persona set", "persona show", "persona reset", "status"):
        synced = fake_discord.synced_command(name)
        assert synced["description"] and all(o["description"] for o in synced.get("options", [])), name
    assert fake_discord.synced_command("kb remove")["options"][0]["autocomplete"] is True
    assert fake_discord.synced_command("persona")["default_member_permissions"] == "32"  # Manage Server
    assert fake_discord.synced_command("memory")["default_member_permissions"] == "32"

    channel = str(fake_discord.channel.id)
    bot.assistant.memory.set_persona(channel, "Be terse.")
    for name, options in [("persona set", {"text": "Talk like a pirate."}), ("persona reset", None), ("memory reset", None),
                          ("kb remove", {"name": "handbook.pdf"})]:
        refused = await command(fake_discord, name, options, member=fake_discord.member)
        assert refused.original.ephemeral and refused.original.content == NEEDS_MANAGER, name
    assert bot.assistant.memory.get_persona(channel) == "Be terse."
    refused = await command(fake_discord, "kb add", {"file": Attachment("garden.pdf", GARDEN)}, member=fake_discord.member)
    assert refused.original.content == "Only members with Manage Server may add documents."
    asked = await fake_discord.user_message("add this", attachments=[Attachment("garden.pdf", GARDEN)])
    note = await fake_discord.wait_for_message(predicate=lambda m: m.reply_to == int(asked["id"]))
    assert note.content.startswith("Only members with Manage Server may add documents")
    assert not fake_discord.cdn_downloads and bot.assistant.knowledge.documents(str(fake_discord.guild.id)) == []

    set_ = await command(fake_discord, "persona set", {"text": "Talk like a pirate."}, member=fake_discord.admin)
    assert set_.original.content == "🎭 Persona set for this channel."
    shown = await command(fake_discord, "persona show", member=fake_discord.admin)
    assert shown.original.content == "This channel's persona:\n>>> Talk like a pirate."
    status = await final_reply(fake_discord, await command(fake_discord, "status"))
    assert status.ephemeral and re.search(r"\*\*Layers on the GPU\*\*: \d+ of 31\b", status.content) and "**Context**: 2048 tokens" in status.content
    assert "**This server's documents**: 0 (0 passages)" in status.content and "**Queue**: 0 " in status.content


async def test_knowledge_roles_may_add_pdfs(fake_discord, launch):
    librarian = Role(fake_discord.ids.next(), "Librarian", EVERYONE_PERMISSIONS)
    fake_discord.guild.roles.append(librarian)
    fake_discord.guild.members[fake_discord.member.id] = [librarian.id]
    async with launch(BOT_DISCORD_KB_ROLES="Librarian") as bot:
        await fake_discord.user_message("add this", attachments=[Attachment("garden.pdf", GARDEN)])
        await fake_discord.wait_for_message(predicate=lambda m: m.content.startswith("✅"), timeout=ANSWER_TIMEOUT)
        assert [d.name for d in bot.assistant.knowledge.documents(str(fake_discord.guild.id))] == ["garden.pdf"]


async def test_memory_export_and_reset(fake_discord, bot):
    asked = await fake_discord.user_message("Remember the word pineapple.")
    await answer_to(fake_discord, asked)
    export = await final_reply(fake_discord, await command(fake_discord, "memory export", member=fake_discord.admin))
    markdown = export.file(f"memory-{fake_discord.channel.id}.md").data.decode()
    assert markdown.startswith(f"# Conversation in channel {fake_discord.channel.id}") and "Remember the word pineapple." in markdown
    shown = await command(fake_discord, "memory show", member=fake_discord.admin)
    assert "Remember the word pineapple." in shown.original.content
    reset = await command(fake_discord, "memory reset", member=fake_discord.admin)
    assert reset.original.content == "🧹 Forgot 1 exchanges in this channel." and not reset.original.ephemeral
    assert bot.assistant.memory.show(str(fake_discord.channel.id)) == []
    asked = await fake_discord.user_message("What word did I ask you to remember?")
    await answer_to(fake_discord, asked)
    assert "pineapple" not in bot.assistant.pipeline.llm.prompts[-1]


async def test_generated_mentions_ping_nobody(fake_discord, launch):
    admin_role = fake_discord.guild.role("Admin")
    loud = f"@everyone @here <@&{admin_role.id}> <@{fake_discord.admin.id}> "
    async with launch(prefix=loud):
        asked = await fake_discord.user_message("Say hello to everybody.")
        [reply] = await answer_to(fake_discord, asked)
    assert reply.content.startswith("@everyone @here") and all(b["content"].startswith("@everyone") for b in reply.bodies)
    assert_nothing_pings(fake_discord)


async def test_answer_survives_a_429_and_a_gateway_drop(fake_discord, bot):
    fake_discord.inject_http_fault("PATCH", "/channels/{channel_id}/messages/{message_id}", status=429, retry_after=0.5)
    asked = await fake_discord.user_message("What is the remote work policy?")
    await fake_discord.wait_for_request("PATCH", "/channels/{channel_id}/messages/{message_id}",
                                        predicate=lambda r: r.status == 429, timeout=ANSWER_TIMEOUT)
    await fake_discord.drop_gateway(4000)  # mid-answer: the bot is waiting out the 429
    [reply] = await answer_to(fake_discord, asked)
    assert not reply.content.endswith(CURSOR) and bot.assistant.memory.show(str(fake_discord.channel.id))[0].status == "complete"
    later = await fake_discord.user_message("And annual leave?")
    await answer_to(fake_discord, later)
    assert len(fake_discord.gateway.resumes) == 1 and len(fake_discord.gateway.identifies) == 1
    assert_nothing_pings(fake_discord)


async def test_restart_keeps_every_channels_memory(fake_discord, launch):
    channels = [fake_discord.channel, fake_discord.guild.channel("docs"), fake_discord.thread]
    async with launch():
        for i, channel in enumerate(channels):
            await answer_to(fake_discord, await fake_discord.user_message(f"My code word is alpha{i}.", channel=channel))
    async with launch() as bot:
        for i, channel in enumerate(channels):
            assert [e.question for e in bot.assistant.memory.show(str(channel.id))] == [f"My code word is alpha{i}."]
        await answer_to(fake_discord, await fake_discord.user_message("What is my code word?", channel=channels[2]))
        [prompt] = bot.assistant.pipeline.llm.prompts
        assert "alpha2" in prompt and "alpha0" not in prompt
    assert len(fake_discord.gateway.identifies) == 2


async def test_bad_uploads_get_a_clear_reply_and_change_nothing(fake_discord, bot):
    cases = {
        "notes.txt": (Attachment("notes.txt", b"just text", "text/plain"), "only PDF files go into the knowledge base"),
        "fake.pdf": (Attachment("fake.pdf", b"hello, not a pdf", "application/pdf"), "not a PDF"),
        "broken.pdf": (Attachment("broken.pdf", HANDBOOK[:300], "application/pdf"), "damaged or truncated"),
        "locked.pdf": (Attachment("locked.pdf", encrypt(HANDBOOK, "pw"), "application/pdf"), "password-protected"),
        "huge.pdf": (Attachment("huge.pdf", HANDBOOK, "application/pdf", size=5_000_000), "over the 1 MB limit"),
    }
    for name, (attachment, reason) in cases.items():
        done = await final_reply(fake_discord, await command(fake_discord, "kb add", {"file": attachment},
                                                             member=fake_discord.admin))
        assert name in done.content and reason in done.content and "not added" in done.content, done.content
    assert not any(url.endswith("/huge.pdf") for url in fake_discord.cdn_downloads)  # refused before downloading
    asked = await fake_discord.user_message("two files", author=fake_discord.admin,
                                            attachments=[cases["notes.txt"][0], cases["locked.pdf"][0]])
    notes = await fake_discord.wait_until(
        lambda: len(m := [x for x in fake_discord.bot_messages if x.reply_to == int(asked["id"]) and "not added" in x.content]) == 2 and m,
        timeout=ANSWER_TIMEOUT, what="two refusals")
    assert "only PDF files" in notes[0].content and "password-protected" in notes[1].content
    guild = str(fake_discord.guild.id)
    assert bot.assistant.knowledge.documents(guild) == [] and bot.assistant.knowledge.store(guild).chunk_count() == 0
    assert len(bot.assistant.pipeline.llm.prompts) == 0  # attachments without a question are not answered


async def test_cooldown_and_queue_position(fake_discord, launch):
    async with launch(BOT_DISCORD_COOLDOWN_S="60"):
        first = await fake_discord.user_message("First question about leave?")
        other = await fake_discord.user_message("Another question?", author=fake_discord.admin,
                                                channel=fake_discord.guild.channel("docs"))
        again = await fake_discord.user_message("Second question right away?")
        slow = await fake_discord.wait_for_message(predicate=lambda m: m.reply_to == int(again["id"]))
        assert slow.content.startswith("Slow down a little: you can ask me again in ") and slow.content.endswith(" s.")
        await answer_to(fake_discord, first)
        [waited] = await answer_to(fake_discord, other)
        assert waited.bodies[0]["content"] == "⏳ Busy answering others: you're #1 in line."
        assert not waited.content.startswith("⏳")


async def test_failures_get_a_short_reply_and_a_logged_trace(fake_discord, bot, caplog):
    bot.assistant.memory.close()  # every memory call now raises sqlite3.ProgrammingError
    with caplog.at_level(logging.ERROR):
        shown = await command(fake_discord, "memory show", member=fake_discord.admin)
        asked = await fake_discord.user_message("Does this still work?")
        [reply] = await answer_to(fake_discord, asked)
    assert shown.original.content == FAILURE_REPLY and shown.original.ephemeral
    assert reply.content == ERROR_REPLY
    assert "Traceback" not in reply.content
    traced = [r for r in caplog.records if r.exc_info]
    assert any("memory show" in r.getMessage() for r in traced) and any("answering" in r.getMessage() for r in traced)


async def test_sharded_bot_answers_in_every_shard(fake_discord, launch, second_guild):
    fake_discord.recommended_shards = 2
    async with launch(BOT_DISCORD_SHARD_COUNT="-1") as bot:
        assert isinstance(bot, ShardedAssistantBot) and bot.shard_count == 2
        for guild in (fake_discord.guild, second_guild):
            await answer_to(fake_discord, await fake_discord.user_message("Hello?", channel=guild.channel("general")))
        assert sorted(i["shard"] for i in fake_discord.gateway.identifies) == [[0, 2], [1, 2]]
        assert isinstance(bot.get_guild(second_guild.id).me, discord.Member)
