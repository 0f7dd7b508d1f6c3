"""Tests of the fake Discord harness itself, driving a tiny throwaway bot with the real discord.py client."""

from __future__ import annotations

import io

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import Attachment, FakeDiscord, SpecViolation

NOTES = ["apple pie", "apricot jam", "banana bread"]


class EchoBot(commands.Bot):
    """Replies "echo: <text>" to mentions (and reports attachment sizes); has /notes add|find and /report."""

    def __init__(self, guild_id: int):
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix="!", intents=intents)
        self.guild_id = guild_id
        self.resumed = 0

    async def setup_hook(self) -> None:
        self.tree.add_command(Notes(), guild=discord.Object(self.guild_id))
        self.tree.add_command(report)
        await self.tree.sync()
        await self.tree.sync(guild=discord.Object(self.guild_id))

    async def on_resumed(self) -> None:
        self.resumed += 1

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.user not in message.mentions:
            return
        text = message.content.replace(self.user.mention, "").strip()
        if text == "stream":  # typing, then one reply edited as it "streams"
            async with message.channel.typing():
                reply = await message.reply("one")
                for content in ("one two", "one two three"):
                    reply = await reply.edit(content=content)
            return
        for att in message.attachments:
            data = await att.read()
            text += f" [{att.filename}: {len(data)} bytes, {data[:4].decode()}]"
        await message.reply(f"echo: {text}")


class Notes(app_commands.Group, name="notes", description="Keep notes"):
    @app_commands.command(description="Add a note")
    @app_commands.describe(text="The note", file="A file to attach")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def add(self, interaction: discord.Interaction, text: str, file: discord.Attachment | None = None):
        extra = f" ({file.filename}, {len(await file.read())} bytes)" if file else ""
        await interaction.response.send_message(f"added {text}{extra}")

    @add.error
    async def add_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError):
        await interaction.response.send_message("You need Manage Server.", ephemeral=True)

    @app_commands.command(description="Find a note")
    @app_commands.describe(query="Words to look for")
    async def find(self, interaction: discord.Interaction, query: str):
        await interaction.response.send_message(", ".join(n for n in NOTES if query in n) or "nothing")

    @find.autocomplete("query")
    async def find_complete(self, interaction: discord.Interaction, current: str):
        return [app_commands.Choice(name=n, value=n) for n in NOTES if n.startswith(current)]


@app_commands.command(description="Write a report file")
@app_commands.describe(topic="What the report is about")
async def report(interaction: discord.Interaction, topic: str):
    await interaction.response.defer(thinking=True)
    await interaction.followup.send("here it is", file=discord.File(io.BytesIO(topic.encode()), "r.txt"))
    await interaction.edit_original_response(content=f"report on {topic}")


@pytest.fixture
async def bot(fake_discord: FakeDiscord, run_bot):
    async with run_bot(EchoBot(fake_discord.guild.id)) as bot:
        yield bot


async def test_login_ready_and_guild_state(fake_discord: FakeDiscord, bot: EchoBot):
    assert bot.user.id == fake_discord.bot_user.id and bot.application_id == fake_discord.application_id
    guild = bot.get_guild(fake_discord.guild.id)
    thread = guild.get_thread(fake_discord.thread.id)
    assert thread.parent_id == fake_discord.channel.id and isinstance(thread.parent, discord.TextChannel)
    assert guild.get_role(fake_discord.guild.role("Admin").id).permissions.manage_guild
    assert guild.me.id == fake_discord.bot_user.id and not guild.me.guild_permissions.manage_guild
    assert [r.method + " " + r.route for r in fake_discord.requests[:2]] == [
        "GET /users/@me", "GET /oauth2/applications/@me"]
    [identify] = fake_discord.gateway.identifies
    assert identify["token"] == fake_discord.token and identify["intents"] & (1 << 15)


async def test_mention_gets_a_reply_and_plain_messages_do_not(fake_discord: FakeDiscord, bot: EchoBot):
    await fake_discord.user_message("no mention here", mentions_bot=False)
    asked = await fake_discord.user_message("hello there", channel=fake_discord.thread)
    reply = await fake_discord.wait_for_message(fake_discord.thread)
    assert reply.content == "echo: hello there"
    assert reply.reply_to == int(asked["id"]) and reply.message_reference["channel_id"] == fake_discord.thread.id
    # A second mention is answered too; the bot's own echoed MESSAGE_CREATEs and the plain message were not.
    await fake_discord.user_message("again")
    await fake_discord.wait_for_message(fake_discord.channel, lambda m: m.content == "echo: again")
    assert [m.content for m in fake_discord.bot_messages] == ["echo: hello there", "echo: again"]


async def test_typing_edits_and_fetches(fake_discord: FakeDiscord, bot: EchoBot):
    asked = await fake_discord.user_message("stream")
    reply = await fake_discord.wait_for_message(predicate=lambda m: m.content == "one two three")
    assert reply.edits == 2 and reply.bodies[0]["content"] == "one"
    assert fake_discord.requests_to("POST", "/channels/{channel_id}/typing")
    channel = bot.get_channel(fake_discord.channel.id)
    assert (await channel.fetch_message(reply.id)).content == "one two three"
    assert [m.id for m in [m async for m in channel.history(limit=5)]] == [reply.id, int(asked["id"])]
    await (await channel.fetch_message(reply.id)).delete()
    assert reply.deleted and [m.id async for m in channel.history(limit=5)] == [int(asked["id"])]


async def test_commands_synced_with_descriptions(fake_discord: FakeDiscord, bot: EchoBot):
    assert [c["name"] for c in fake_discord.synced_commands()] == ["report"]
    assert fake_discord.synced_command("notes", fake_discord.guild)["description"] == "Keep notes"
    add = fake_discord.synced_command("notes add", fake_discord.guild)
    assert add["description"] == "Add a note"
    assert {o["name"]: o["description"] for o in add["options"]} == {"text": "The note", "file": "A file to attach"}
    find = fake_discord.synced_command("notes find", fake_discord.guild)
    assert find["options"][0]["autocomplete"] is True
    with pytest.raises(KeyError):
        fake_discord.synced_command("notes", None)  # guild-only


async def test_deferred_command_follows_up_with_a_file(fake_discord: FakeDiscord, bot: EchoBot):
    interaction = await fake_discord.slash_command("report", {"topic": "quarterly"})
    followup = await fake_discord.wait_for_followup(interaction)
    original = await fake_discord.wait_for_message(predicate=lambda m: m.content == "report on quarterly")
    assert interaction.callback_type == 5 and original is interaction.original and not original.loading
    assert followup.content == "here it is" and followup.file("r.txt").data == b"quarterly"
    assert followup.attachments[0]["filename"] == "r.txt"


async def test_group_command_with_attachment_option_and_permissions(fake_discord: FakeDiscord, bot: EchoBot):
    denied = await fake_discord.slash_command("notes add", {"text": "x"}, member=fake_discord.member)
    assert (await fake_discord.wait_for_response(denied))["data"]["flags"] == 64
    pdf = Attachment("a.pdf", b"%PDF-1.7 tiny", "application/pdf")
    allowed = await fake_discord.slash_command("notes add", {"text": "hi", "file": pdf}, member=fake_discord.admin)
    await fake_discord.wait_for_response(allowed)
    assert allowed.original.content == "added hi (a.pdf, 13 bytes)"
    assert len(fake_discord.cdn_downloads) == 1


async def test_autocomplete(fake_discord: FakeDiscord, bot: EchoBot):
    interaction = await fake_discord.autocomplete("notes find", {"query": "ap"}, focused="query")
    await fake_discord.wait_for_response(interaction)
    assert [c["value"] for c in interaction.choices] == ["apple pie", "apricot jam"]


async def test_attachment_downloaded_from_cdn(fake_discord: FakeDiscord, bot: EchoBot):
    pdf = Attachment("doc.pdf", b"%PDF" + b"x" * 96, "application/pdf")
    await fake_discord.user_message("read this", attachments=[pdf])
    reply = await fake_discord.wait_for_message(fake_discord.channel)
    assert reply.content == "echo: read this [doc.pdf: 100 bytes, %PDF]"
    assert fake_discord.cdn_downloads[0].endswith("/doc.pdf")


async def test_429_is_retried_after_retry_after(fake_discord: FakeDiscord, bot: EchoBot):
    fake_discord.inject_http_fault("POST", "/channels/{channel_id}/messages", status=429, retry_after=0.3)
    await fake_discord.user_message("slow down")
    reply = await fake_discord.wait_for_message(fake_discord.channel)
    first, second = fake_discord.requests_to("POST", "/channels/{channel_id}/messages")
    assert (first.status, second.status) == (429, 200) and reply.content == "echo: slow down"
    assert second.time - first.time >= 0.3


async def test_gateway_drop_resumes_and_delivers_events_from_the_outage(fake_discord: FakeDiscord, bot: EchoBot):
    gateway = fake_discord.gateway
    session = gateway.by_shard[0]
    await fake_discord.drop_gateway(4000)
    asked = await fake_discord.user_message("are you there?")  # while the socket is down
    reply = await fake_discord.wait_for_message(fake_discord.channel)
    assert reply.content == "echo: are you there?"
    [resume] = gateway.resumes
    assert len(gateway.identifies) == 1 and gateway.connects == 2
    assert resume["session_id"] == session.session_id
    [frame] = [f for f in session.sent if f["t"] == "MESSAGE_CREATE" and f["d"]["id"] == asked["id"]]
    assert frame["s"] > resume["seq"]  # it was replayed on RESUME, not delivered live
    await fake_discord.wait_until(lambda: bot.resumed == 1, what="on_resumed")


async def test_spec_validation_fails_on_malformed_payloads(fake_discord: FakeDiscord, bot: EchoBot):
    # A malformed response (the fake answers what a test injects, and checks it like any other).
    fake_discord.inject_http_fault("GET", "/users/@me", status=200, body={"id": 1, "username": "x"})
    await bot.http.request(discord.http.Route("GET", "/users/@me"))
    # A malformed request body.
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=fake_discord.channel.id)
    await bot.http.request(route, json={"content": "x", "tts": "yes"})
    # A route the fake does not serve.
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=fake_discord.guild.id))
    response, request = fake_discord.spec_violations
    assert "200 response of GET /users/@me" in response and "'discriminator' is a required property" in response
    assert "request body of POST /channels/{channel_id}/messages" in request and "/tts" in request
    with pytest.raises(SpecViolation, match="unhandled route: GET /guilds/"):
        fake_discord.assert_clean()
    fake_discord.spec_violations.clear()
    fake_discord.unhandled.clear()


async def test_sharded_bot_gets_each_guild_on_its_shard(fake_discord: FakeDiscord, run_bot):
    second = fake_discord.add_guild("Second Guild")
    fake_discord.recommended_shards = 2
    bot = commands.AutoShardedBot(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
    async with run_bot(bot):
        assert sorted(i["shard"] for i in fake_discord.gateway.identifies) == [[0, 2], [1, 2]]
        for guild in (fake_discord.guild, second):
            assert bot.get_guild(guild.id).shard_id == (guild.id >> 22) % 2
        assert fake_discord.requests_to("GET", "/gateway/bot")


async def test_members_intent_chunks_guild_members(fake_discord: FakeDiscord, run_bot):
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.all())
    async with run_bot(bot):
        guild = bot.get_guild(fake_discord.guild.id)
        assert guild.chunked and guild.get_member(fake_discord.admin.id).guild_permissions.manage_guild
        assert not guild.get_member(fake_discord.member.id).guild_permissions.manage_guild
