"""The fake gateway: HELLO, heartbeat ACK, IDENTIFY -> READY + GUILD_CREATE, RESUME with replay, sharding.

Plain JSON text frames only (discord.py decompresses binary frames only, so compression is ignored).
Every dispatch gets a sequence number and is kept per session, so a RESUME replays what the client
missed, including events injected while the socket was down.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from . import payloads as p

if TYPE_CHECKING:
    from .server import FakeDiscord

# opcodes
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    0, 1, 2, 6, 7, 8, 9, 10, 11,
)


@dataclass
class GatewaySession:
    """One identified shard session. ``sent`` holds every dispatch (with ``s``) for RESUME replay."""

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    ws: web.WebSocketResponse | None = None
    seq: int = 0
    sent: list[dict] = field(default_factory=list)


class Gateway:
    def __init__(self, fake: FakeDiscord, heartbeat_interval_ms: int = 45_000):
        self.fake = fake
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, GatewaySession] = {}
        self.by_shard: dict[int, GatewaySession] = {}
        self.connects = 0
        self.identifies: list[dict] = []  # IDENTIFY ``d`` payloads, in order
        self.resumes: list[dict] = []  # RESUME ``d`` payloads, in order
        self.received: list[dict] = []  # every frame the client sent
        self._sockets: set[web.WebSocketResponse] = set()

    # --- connection handling -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connects += 1
        self._sockets.add(ws)
        self.fake._notify()
        await self._send(ws, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.received.append(frame)
                await self._on_frame(ws, frame)
                self.fake._notify()
        finally:
            self._sockets.discard(ws)
            for session in self.sessions.values():
                if session.ws is ws:
                    session.ws = None
            self.fake._notify()
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == HEARTBEAT:
            await self._send(ws, {"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            await self._identify(ws, d)
        elif op == RESUME:
            await self._resume(ws, d)
        elif op == REQUEST_MEMBERS:
            await self._members_chunk(ws, d)
        # op 3 (presence) and op 4 (voice) are accepted and ignored

    async def _identify(self, ws: web.WebSocketResponse, d: dict) -> None:
        self.identifies.append(d)
        shard_id, shard_count = d.get("shard") or [0, 1]
        session = GatewaySession(secrets.token_hex(16), shard_id, shard_count, d.get("intents", 0), ws=ws)
        self.sessions[session.session_id] = session
        self.by_shard[shard_id] = session
        guilds = [g for g in self.fake.guilds.values() if (g.id >> 22) % shard_count == shard_id]
        fake = self.fake
        await self._dispatch_to(session, "READY", {
            "v": 10,
            "user": {**fake.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": fake.gateway_url,
            "shard": [shard_id, shard_count],
            "application": {"id": str(fake.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
        })
        for guild in guilds:
            await self._dispatch_to(session, "GUILD_CREATE", p.guild_create_payload(guild, fake.users))

    async def _resume(self, ws: web.WebSocketResponse, d: dict) -> None:
        self.resumes.append(d)
        session = self.sessions.get(d.get("session_id"))
        if session is None:
            await self._send(ws, {"op": INVALID_SESSION, "d": False})
            return
        session.ws = ws
        for frame in session.sent:
            if frame["s"] > d.get("seq", 0):
                await self._send(ws, frame)
        await self._dispatch_to(session, "RESUMED", {})

    async def _members_chunk(self, ws: web.WebSocketResponse, d: dict) -> None:
        guild = self.fake.guilds[int(d["guild_id"])]
        session = next(s for s in self.sessions.values() if s.ws is ws)
        members = [p.member_payload(guild, self.fake.users[uid], uid) for uid in guild.members]
        chunk = {"guild_id": str(guild.id), "members": members, "chunk_index": 0, "chunk_count": 1}
        if "nonce" in d:
            chunk["nonce"] = d["nonce"]
        await self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    # --- sending ---------------------------------------------------------------------------

    @staticmethod
    async def _send(ws: web.WebSocketResponse, frame: dict) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(frame))

    async def _dispatch_to(self, session: GatewaySession, event: str, d: Any) -> None:
        session.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": session.seq, "d": d}
        session.sent.append(frame)
        if session.ws is not None:  # else buffered until RESUME
            await self._send(session.ws, frame)

    def session_for(self, guild_id: int | None) -> GatewaySession | None:
        """The live session of the shard a guild routes to (DMs go to shard 0)."""
        if not self.by_shard:
            return None
        count = next(iter(self.by_shard.values())).shard_count
        shard_id = 0 if guild_id is None else (guild_id >> 22) % count
        return self.by_shard.get(shard_id)

    async def dispatch(self, event: str, d: dict, guild_id: int | None, *, required: bool = True) -> None:
        """Send a dispatch event to the shard that owns ``guild_id`` (buffered while disconnected)."""
        session = self.session_for(guild_id)
        if session is None:
            if required:
                raise RuntimeError(f"no gateway session for guild {guild_id}: is the bot connected and ready?")
            return
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            d = self._apply_content_intent(session, d)
        await self._dispatch_to(session, event, d)

    def _apply_content_intent(self, session: GatewaySession, d: dict) -> dict:
        """Without the message content intent, Discord blanks content unless the bot is the author or mentioned."""
        bot_id = str(self.fake.bot_user.id)
        if session.intents & p.MESSAGE_CONTENT_INTENT or "guild_id" not in d:
            return d
        if d["author"]["id"] == bot_id or any(u["id"] == bot_id for u in d.get("mentions", [])):
            return d
        return {**d, "content": "", "embeds": [], "attachments": [], "components": []}

    # --- faults ----------------------------------------------------------------------------

    async def drop(self, code: int = 4000, shard_id: int = 0) -> None:
        """Close the shard's socket from the server side; discord.py then RESUMEs (for resumable codes)."""
        session = self.by_shard[shard_id]
        ws, session.ws = session.ws, None
        if ws is not None:
            await ws.close(code=code, message=b"fake: dropped")

    async def send_op(self, op: int, d: Any = None, shard_id: int = 0) -> None:
        """Send a raw opcode, e.g. RECONNECT (7) or INVALID_SESSION (9)."""
        session = self.by_shard[shard_id]
        if session.ws is not None:
            await self._send(session.ws, {"op": op, "d": d})

    async def close_all(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"fake: shutting down")
