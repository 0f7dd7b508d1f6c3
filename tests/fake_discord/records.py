"""What the fake records: requests, the bot's messages, interactions, and injected HTTP faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .payloads import EPHEMERAL, LOADING


@dataclass
class SentFile:
    """A file part of a multipart request (``files[n]``)."""

    field: str
    filename: str
    data: bytes
    content_type: str | None = None


@dataclass
class RecordedRequest:
    """One REST request as the fake received it, and what it answered."""

    method: str
    path: str  # concrete path without /api/v10, e.g. /channels/123/messages
    route: str | None  # the spec's template, e.g. /channels/{channel_id}/messages; None if unknown
    query: dict[str, str]
    headers: dict[str, str]
    json: Any  # the JSON body, or the parsed payload_json of a multipart body
    files: list[SentFile]
    time: float  # event loop time on arrival
    status: int | None = None  # set once answered
    response: Any = None

    def matches(self, method: str, path: str) -> bool:
        """``path`` is a spec template (``/channels/{channel_id}/messages``) or a concrete path."""
        return self.method == method.upper() and path in (self.route, self.path)


@dataclass
class BotMessage:
    """A message the bot created: by ``channel.send`` (via="channel"), as an interaction
    response (via="interaction", the @original) or as a follow-up (via="followup")."""

    id: int
    channel_id: int
    guild_id: int | None
    via: str
    data: dict  # the current message object, as the fake returns it
    files: list[SentFile]  # every file uploaded with the create or any edit
    bodies: list[dict] = field(default_factory=list)  # JSON body of the create, then of each edit
    interaction_id: int | None = None
    deleted: bool = False

    @property
    def content(self) -> str:
        return self.data["content"]

    @property
    def edits(self) -> int:
        return len(self.bodies) - 1

    @property
    def flags(self) -> int:
        return self.data["flags"]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred ("thinking...") response not yet edited."""
        return bool(self.flags & LOADING)

    @property
    def allowed_mentions(self) -> dict | None:
        """The allowed_mentions of the latest body that set one."""
        return next((b["allowed_mentions"] for b in reversed(self.bodies) if b.get("allowed_mentions")), None)

    @property
    def message_reference(self) -> dict | None:
        """As the bot sent it (discord.py sends snowflakes as ints here)."""
        return self.bodies[0].get("message_reference") if self.bodies else None

    @property
    def reply_to(self) -> int | None:
        ref = self.message_reference
        return int(ref["message_id"]) if ref and ref.get("message_id") else None

    @property
    def attachments(self) -> list[dict]:
        return self.data["attachments"]

    def file(self, filename: str) -> SentFile:
        return next(f for f in reversed(self.files) if f.filename == filename)


@dataclass
class InteractionRecord:
    """An interaction the fake dispatched, and how the bot answered it."""

    id: int
    token: str
    payload: dict  # the INTERACTION_CREATE ``d``
    callbacks: list[dict] = field(default_factory=list)  # callback request bodies
    original: BotMessage | None = None
    followups: list[BotMessage] = field(default_factory=list)

    @property
    def callback_type(self) -> int | None:
        return self.callbacks[0]["type"] if self.callbacks else None

    @property
    def choices(self) -> list[dict] | None:
        """Autocomplete choices (callback type 8)."""
        if self.callback_type != 8:
            return None
        return self.callbacks[0]["data"]["choices"]


@dataclass
class HttpFault:
    """An injected REST failure; served ``times`` times to requests matching method and path."""

    method: str
    path: str
    status: int
    body: dict
    headers: dict[str, str]
    times: int = 1
    served: int = 0
