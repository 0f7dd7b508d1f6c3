"""The fake's world (users, guilds, channels, roles) and the JSON payloads built from it.

Payload shapes follow Discord's OpenAPI spec (responses) and discord.py 2.7.1's parsers
(gateway events, which the spec does not describe).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions)
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
EVERYONE_PERMISSIONS = (
    (1 << 6)  # ADD_REACTIONS
    | (1 << 10)  # VIEW_CHANNEL
    | (1 << 11)  # SEND_MESSAGES
    | (1 << 14)  # EMBED_LINKS
    | (1 << 15)  # ATTACH_FILES
    | (1 << 16)  # READ_MESSAGE_HISTORY
    | (1 << 31)  # USE_APPLICATION_COMMANDS
    | (1 << 38)  # SEND_MESSAGES_IN_THREADS
)
MESSAGE_CONTENT_INTENT = 1 << 15

# Channel types
TEXT = 0
PUBLIC_THREAD = 11

# Message flags
EPHEMERAL = 1 << 6
LOADING = 1 << 7


class Snowflakes:
    """Deterministic, increasing snowflakes: one millisecond apart, so ``(id >> 22) % n`` spreads guilds over shards."""

    def __init__(self, start_ms: int = 1_750_000_000_000):
        self._ms = itertools.count(start_ms - DISCORD_EPOCH_MS)

    def next(self) -> int:
        return next(self._ms) << 22


def timestamp(snowflake: int | None = None) -> str:
    """ISO 8601 time of a snowflake (or now)."""
    if snowflake is None:
        return datetime.now(timezone.utc).isoformat()
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


@dataclass
class User:
    id: int
    username: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict:
        """A UserResponse."""
        return {
            "id": str(self.id),
            "username": self.username,
            "avatar": None,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "global_name": None if self.bot else self.username.title(),
            "primary_guild": None,
            "bot": self.bot,
        }


@dataclass
class Role:
    id: int
    name: str
    permissions: int = 0
    position: int = 0

    def payload(self) -> dict:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class Channel:
    """A guild text channel (type 0) or a public thread (type 11, with ``parent_id``)."""

    id: int
    guild_id: int
    name: str
    type: int = TEXT
    parent_id: int | None = None
    owner_id: int | None = None  # threads only

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict:
        data = {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "type": self.type,
            "position": 0,
            "flags": 0,
            "permission_overwrites": [],
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "nsfw": False,
            "topic": None,
        }
        if self.type == PUBLIC_THREAD:
            data.update(
                owner_id=str(self.owner_id),
                message_count=0,
                member_count=1,
                total_message_sent=0,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": timestamp(self.id),
                    "locked": False,
                    "create_timestamp": timestamp(self.id),
                },
            )
            del data["permission_overwrites"], data["position"], data["topic"]
        return data


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    channels: list[Channel] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)
    members: dict[int, list[int]] = field(default_factory=dict)  # user id -> role ids (not @everyone)

    @property
    def everyone(self) -> Role:
        return next(r for r in self.roles if r.id == self.id)

    def channel(self, name: str) -> Channel:
        return next(c for c in self.channels if c.name == name)

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions (no channel overwrites): @everyone | roles, everything for admins and the owner."""
        perms = self.everyone.permissions
        for role in self.roles:
            if role.id in self.members.get(user_id, []):
                perms |= role.permissions
        if user_id == self.owner_id or perms & ADMINISTRATOR:
            return (1 << 53) - 1
        return perms


@dataclass
class Attachment:
    """A file a user attaches. ``size`` defaults to ``len(data)``; set it to declare a different size."""

    filename: str
    data: bytes
    content_type: str | None = None
    size: int | None = None


def member_payload(guild: Guild, user: User | None, user_id: int, *, with_user: bool = True) -> dict:
    data = {
        "roles": [str(r) for r in guild.members.get(user_id, [])],
        "joined_at": timestamp(guild.id),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "nick": None,
        "avatar": None,
        "premium_since": None,
    }
    if with_user and user is not None:
        data["user"] = user.payload()
    return data


def guild_create_payload(guild: Guild, users: dict[int, User]) -> dict:
    """GUILD_CREATE ``d``: channels, threads, roles (incl. @everyone), members."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "owner_id": str(guild.owner_id),
        "unavailable": False,
        "large": False,
        "member_count": len(guild.members),
        "features": [],
        "preferred_locale": "en-US",
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "premium_tier": 0,
        "nsfw_level": 0,
        "system_channel_id": None,
        "joined_at": timestamp(guild.id),
        "roles": [r.payload() for r in guild.roles],
        "emojis": [],
        "stickers": [],
        "channels": [c.payload() for c in guild.channels if c.type != PUBLIC_THREAD],
        "threads": [c.payload() for c in guild.channels if c.type == PUBLIC_THREAD],
        "members": [member_payload(guild, users[uid], uid) for uid in guild.members],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message_payload(
    *,
    id: int,
    channel: Channel,
    author: User,
    guild: Guild | None,
    content: str = "",
    mentions: list[User] = (),
    attachments: list[dict] = (),
    embeds: list[dict] = (),
    flags: int = 0,
    reference: dict | None = None,
    referenced_message: dict | None = None,
    webhook_id: int | None = None,
    application_id: int | None = None,
) -> dict:
    """A MessageResponse, plus the gateway-only ``guild_id``/``member`` fields when in a guild."""
    data = {
        "id": str(id),
        "channel_id": str(channel.id),
        "type": 19 if reference else 0,
        "content": content,
        "author": author.payload(),
        "timestamp": timestamp(id),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": list(attachments),
        "embeds": list(embeds),
        "components": [],
        "pinned": False,
        "flags": flags,
    }
    if guild is not None:
        data["guild_id"] = str(guild.id)
        if author.id in guild.members:
            data["member"] = member_payload(guild, author, author.id, with_user=False)
        for user in mentions:
            mention = user.payload()
            if user.id in guild.members:
                mention["member"] = member_payload(guild, user, user.id, with_user=False)
            data["mentions"].append(mention)
    if reference:
        data["message_reference"] = reference
        data["referenced_message"] = referenced_message
    if webhook_id:
        data["webhook_id"] = str(webhook_id)
    if application_id:
        data["application_id"] = str(application_id)
    return data
