"""FakeDiscord: REST (/api/v10), gateway websocket (/) and attachment CDN (/attachments/...) on 127.0.0.1.

Usage (the fixtures in fixtures.py do this for you)::

    fake = FakeDiscord()
    await fake.start()                     # ephemeral port
    # point discord.py at fake.api_base / fake.gateway_url, start the bot ...
    await fake.user_message("hello")       # MESSAGE_CREATE mentioning the bot
    reply = await fake.wait_for_message(fake.channel)
    await fake.stop()
    fake.assert_clean()                    # no unknown routes hit, no spec violations
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import payloads as p
from . import spec
from .gateway import Gateway
from .payloads import Attachment, Channel, Guild, Role, User
from .records import BotMessage, HttpFault, InteractionRecord, RecordedRequest, SentFile

API = "/api/v10"
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


class DiscordError(Exception):
    """Raised by handlers; answered in Discord's error format ``{"message", "code"}``."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py requires Content-Type to be exactly "application/json" (no charset).
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={**(headers or {}), "Content-Type": "application/json"}
    )


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


class FakeDiscord:
    """A small, stateful Discord API for end-to-end tests of an unmodified discord.py client.

    The default world: application/bot user ``bot_user``; guild ``guild`` ("Test Guild") with text
    channels ``channel`` (#general) and #docs, thread ``thread`` (type 11 under #general); roles
    @everyone and "Admin" (MANAGE_GUILD); members ``admin`` (alice, has Admin), ``member`` (bob),
    ``owner`` (guild owner) and the bot. ``add_guild()`` adds more guilds of the same shape.
    """

    def __init__(self, *, token: str = "fake-bot-token"):
        self.token = token
        self.ids = p.Snowflakes()
        self.application_id = self.ids.next()
        self.bot_user = User(self.application_id, "PDF Assistant", bot=True)  # bot user id == application id
        self.owner = User(self.ids.next(), "owner")
        self.admin = User(self.ids.next(), "alice")
        self.member = User(self.ids.next(), "bob")
        self.users: dict[int, User] = {u.id: u for u in (self.bot_user, self.owner, self.admin, self.member)}
        self.guilds: dict[int, Guild] = {}
        self.guild = self.add_guild("Test Guild")
        self.channel = self.guild.channel("general")
        self.thread = self.guild.channel("general-thread")

        self.requests: list[RecordedRequest] = []  # every REST request, in arrival order
        self.unhandled: list[RecordedRequest] = []  # REST requests to routes the fake does not serve
        self.spec_violations: list[str] = []
        self.messages: dict[int, dict] = {}  # every message the fake knows (users' and the bot's), by id
        self.bot_messages: list[BotMessage] = []
        self.commands: dict[int | None, list[dict]] = {}  # guild id (None = global) -> synced commands
        self.interactions: dict[int, InteractionRecord] = {}
        self.cdn: dict[str, tuple[bytes, str | None]] = {}  # path -> (bytes, content type)
        self.cdn_downloads: list[str] = []
        self.recommended_shards = 1  # what GET /gateway/bot answers
        self.gateway = Gateway(self)
        self._faults: list[HttpFault] = []
        self._waiters: list[asyncio.Future] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- world ---------------------------------------------------------------------------

    def add_user(self, username: str) -> User:
        user = User(self.ids.next(), username)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str) -> Guild:
        """A guild with #general, #docs, a thread under #general, @everyone + Admin roles, and the default members."""
        gid = self.ids.next()
        everyone = Role(gid, "@everyone", p.EVERYONE_PERMISSIONS)
        admin_role = Role(self.ids.next(), "Admin", p.MANAGE_GUILD, position=1)
        general = Channel(self.ids.next(), gid, "general")
        docs = Channel(self.ids.next(), gid, "docs")
        thread = Channel(self.ids.next(), gid, "general-thread", p.PUBLIC_THREAD, general.id, self.admin.id)
        guild = Guild(gid, name, self.owner.id, [general, docs, thread], [everyone, admin_role])
        guild.members = {self.bot_user.id: [], self.owner.id: [], self.admin.id: [admin_role.id], self.member.id: []}
        self.guilds[gid] = guild
        return guild

    def channel_by_id(self, channel_id: int) -> Channel:
        for guild in self.guilds.values():
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        raise DiscordError(404, 10003, "Unknown Channel")

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What discord.http.Route.BASE must be."""
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, route, handler in self._routes():
            app.router.add_route(method, API + route, self._endpoint(route, handler))
        app.router.add_route("*", API + "/{tail:.*}", self._unknown_route)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn_get)
        app.router.add_get("/", self.gateway.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def assert_clean(self) -> None:
        """Fail if the bot hit a route the fake does not serve, or any payload broke the OpenAPI spec."""
        problems = [f"unhandled route: {r.method} {r.path}" for r in self.unhandled] + self.spec_violations
        if problems:
            raise spec.SpecViolation("fake Discord saw problems:\n" + "\n".join(problems))

    # --- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, check: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition") -> Any:
        """Re-evaluate ``check()`` whenever the fake's state changes; return its first truthy result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake Discord: timed out after {timeout}s waiting for {what}")
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass

    async def wait_for_message(
        self,
        channel: Channel | int | None = None,
        predicate: Callable[[BotMessage], bool] | None = None,
        *,
        timeout: float = 5.0,
    ) -> BotMessage:
        """The first bot message (in ``channel``, if given) whose current state satisfies ``predicate``."""
        channel_id = getattr(channel, "id", channel)

        def check():
            for msg in self.bot_messages:
                if channel_id in (None, msg.channel_id) and (predicate is None or predicate(msg)):
                    return msg

        return await self.wait_until(check, timeout=timeout, what=f"a bot message in channel {channel_id}")

    async def wait_for_request(
        self,
        method: str,
        path: str,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> RecordedRequest:
        """The ``count``-th answered request matching method and path (template or concrete)."""

        def check():
            hits = [r for r in self.requests_to(method, path) if r.status is not None and (not predicate or predicate(r))]
            return hits[count - 1] if len(hits) >= count else None

        return await self.wait_until(check, timeout=timeout, what=f"request #{count} {method} {path}")

    async def wait_for_response(self, interaction: InteractionRecord, *, timeout: float = 5.0) -> dict:
        """The interaction's callback body ({type, data})."""
        await self.wait_until(lambda: interaction.callbacks, timeout=timeout, what=f"callback of {interaction.id}")
        return interaction.callbacks[0]

    async def wait_for_followup(
        self,
        interaction: InteractionRecord,
        predicate: Callable[[BotMessage], bool] | None = None,
        *,
        timeout: float = 5.0,
    ) -> BotMessage:
        def check():
            return next((m for m in interaction.followups if predicate is None or predicate(m)), None)

        return await self.wait_until(check, timeout=timeout, what=f"a follow-up of interaction {interaction.id}")

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.matches(method, path)]

    # --- faults ----------------------------------------------------------------------------

    def inject_http_fault(
        self,
        method: str,
        path: str,
        *,
        status: int = 429,
        retry_after: float = 0.2,
        is_global: bool = False,
        times: int = 1,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
        via: bool = True,
    ) -> HttpFault:
        """Answer the next ``times`` matching requests with ``status`` instead of serving them.

        For 429 the response is what discord.py needs to retry: a ``Via`` header (``via=False`` drops
        it, which discord.py treats as a Cloudflare ban), a JSON body with ``retry_after``/``global``,
        and a consistent set of X-RateLimit-* headers. ``body`` replaces the default body, for any status.
        """
        if status == 429:
            default_body = {"message": "You are being rate limited.", "retry_after": retry_after,
                            "global": is_global, "code": 0}
            default_headers = {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": "fake" + secrets.token_hex(8),
                "X-RateLimit-Scope": "global" if is_global else "user",
            }
            if is_global:
                default_headers["X-RateLimit-Global"] = "true"
            if via:
                default_headers["Via"] = "1.1 google"
        else:
            default_body = {"message": f"{status}: injected fault", "code": 0}
            default_headers = {}
        fault = HttpFault(method.upper(), path, status, body if body is not None else default_body,
                          {**default_headers, **(headers or {})}, times)
        self._faults.append(fault)
        return fault

    async def drop_gateway(self, code: int = 4000, *, shard_id: int = 0) -> None:
        """Close the bot's gateway socket (resumable codes make discord.py RESUME).
        Events dispatched until then are buffered and replayed on RESUME."""
        await self.gateway.drop(code, shard_id)

    async def send_gateway_op(self, op: int, d: Any = None, *, shard_id: int = 0) -> None:
        """Send a raw opcode, e.g. 7 (RECONNECT) or 9 (INVALID_SESSION, d=False forces a new IDENTIFY)."""
        await self.gateway.send_op(op, d, shard_id)

    # --- event injection -------------------------------------------------------------------

    async def dispatch(self, event: str, d: dict, guild_id: int | None = None) -> None:
        """Send any gateway event to the shard owning ``guild_id``. MESSAGE_* payloads are spec-checked."""
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            self._check(spec.check_schema, "MessageResponse", d, f"{event} d")
        await self.gateway.dispatch(event, d, guild_id)

    def _cdn_attachment(self, channel_id: int, attachment: Attachment) -> dict:
        """Serve ``attachment`` on the fake CDN; return its MessageAttachmentResponse."""
        aid = self.ids.next()
        path = f"/attachments/{channel_id}/{aid}/{attachment.filename}"
        self.cdn[path] = (attachment.data, attachment.content_type)
        data = {
            "id": str(aid),
            "filename": attachment.filename,
            "size": len(attachment.data) if attachment.size is None else attachment.size,
            "url": self.base_url + path,
            "proxy_url": self.base_url + path,
        }
        if attachment.content_type:
            data["content_type"] = attachment.content_type
        return data

    async def user_message(
        self,
        content: str = "",
        *,
        channel: Channel | None = None,
        author: User | None = None,
        mentions_bot: bool = True,
        reply_to: dict | BotMessage | int | None = None,
        attachments: list[Attachment] = (),
        mentions: list[User] = (),
    ) -> dict:
        """A user posts a message: dispatch MESSAGE_CREATE and return its payload.

        ``mentions_bot`` prefixes ``<@bot>`` and lists the bot in ``mentions`` (what makes
        ``bot.user in message.mentions`` true). ``reply_to`` is a message (payload, BotMessage or id)
        in the same channel. ``attachments`` are served by the fake CDN.
        """
        channel = channel or self.channel
        author = author or self.member
        guild = self.guilds[channel.guild_id]
        mentions = list(mentions)
        if mentions_bot:
            content = f"{self.bot_user.mention} {content}".rstrip()
            mentions.insert(0, self.bot_user)
        reference = referenced = None
        if reply_to is not None:
            ref_id = int(reply_to if isinstance(reply_to, int) else getattr(reply_to, "id", None) or reply_to["id"])
            referenced = self.messages[ref_id]
            reference = {"type": 0, "channel_id": str(channel.id), "message_id": str(ref_id), "guild_id": str(guild.id)}
        data = p.message_payload(
            id=self.ids.next(), channel=channel, author=author, guild=guild, content=content, mentions=mentions,
            attachments=[self._cdn_attachment(channel.id, a) for a in attachments],
            reference=reference, referenced_message=referenced,
        )
        self.messages[int(data["id"])] = data
        await self.dispatch("MESSAGE_CREATE", data, guild.id)
        return data

    async def slash_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        channel: Channel | None = None,
        member: User | None = None,
    ) -> InteractionRecord:
        """A member runs a synced slash command: dispatch INTERACTION_CREATE (type 2).

        ``name`` is the command path as users type it: "status", "kb add", "group sub command".
        ``options`` maps option names to values; option types come from the synced definition.
        Attachment options take an ``Attachment`` (served by the CDN, listed in ``data.resolved``),
        user options a ``User``, channel options a ``Channel``.
        """
        return await self._interaction(2, name, options or {}, channel, member, focused=None)

    async def autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str,
        channel: Channel | None = None,
        member: User | None = None,
    ) -> InteractionRecord:
        """A member is typing option ``focused`` of a synced command: dispatch INTERACTION_CREATE (type 4).
        Await ``fake.wait_for_response(record)``; the choices are then in ``record.choices``."""
        return await self._interaction(4, name, options or {}, channel, member, focused=focused)

    def synced_commands(self, guild: Guild | int | None = None) -> list[dict]:
        """The commands as last synced, globally (None) or for a guild."""
        return self.commands.get(getattr(guild, "id", guild), [])

    def synced_command(self, name: str, guild: Guild | int | None = None) -> dict:
        """A synced command or sub-command by path ("kb", "kb add"), with its description and options."""
        first, *rest = name.split()
        node = next((c for c in self.synced_commands(guild) if c["name"] == first), None)
        for part in rest:
            if node is None:
                break
            node = next((o for o in node.get("options", []) if o["name"] == part and o["type"] in (1, 2)), None)
        if node is None:
            where = "globally" if guild is None else f"in guild {getattr(guild, 'id', guild)}"
            raise KeyError(f"/{name} was not synced {where}")
        return node

    async def _interaction(self, itype, name, options, channel, member, focused) -> InteractionRecord:
        channel = channel or self.channel
        member = member or self.member
        guild = self.guilds[channel.guild_id]
        top, guild_scoped = self._find_synced(name.split()[0], guild)
        node = self.synced_command(name, guild.id if guild_scoped else None)
        resolved: dict = {}
        leaf_options = self._option_values(name, node, options, resolved, channel, focused)
        for part in reversed(name.split()[1:]):
            sub = next(o for o in self._path_nodes(top, name) if o["name"] == part)
            leaf_options = [{"name": part, "type": sub["type"], "options": leaf_options}]
        data = {"id": top["id"], "name": top["name"], "type": top.get("type", 1), "options": leaf_options}
        if resolved:
            data["resolved"] = resolved
        if guild_scoped:
            data["guild_id"] = str(guild.id)  # discord.py finds guild commands through data.guild_id
        record = InteractionRecord(self.ids.next(), secrets.token_urlsafe(32), {})
        record.payload = {
            "id": str(record.id),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "guild_id": str(guild.id),
            "channel_id": str(channel.id),
            "channel": {**channel.payload(), "permissions": str(guild.permissions_of(member.id))},
            "member": {**p.member_payload(guild, member, member.id), "permissions": str(guild.permissions_of(member.id))},
            "token": record.token,
            "version": 1,
            "app_permissions": str(guild.permissions_of(self.bot_user.id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        self.interactions[record.id] = record
        await self.dispatch("INTERACTION_CREATE", record.payload, guild.id)
        return record

    def _find_synced(self, first: str, guild: Guild) -> tuple[dict, bool]:
        for scoped, cmds in ((True, self.synced_commands(guild)), (False, self.synced_commands(None))):
            for cmd in cmds:
                if cmd["name"] == first:
                    return cmd, scoped
        raise KeyError(f"/{first} was never synced (globally or to {guild.name}); Discord could not send it")

    @staticmethod
    def _path_nodes(top: dict, name: str) -> list[dict]:
        """Every sub-command/group node along ``name``'s path."""
        nodes, node = [], top
        for part in name.split()[1:]:
            node = next(o for o in node.get("options", []) if o["name"] == part)
            nodes.append(node)
        return nodes

    def _option_values(self, name, node, values, resolved, channel, focused) -> list[dict]:
        defs = {o["name"]: o for o in node.get("options", []) if o["type"] not in (1, 2)}
        for opt in defs.values():
            if opt.get("required") and opt["name"] not in values and focused is None:
                raise ValueError(f"/{name}: required option {opt['name']!r} missing; Discord would not send this")
        out = []
        for key, value in values.items():
            if key not in defs:
                raise ValueError(f"/{name} has no option {key!r} (has {sorted(defs)})")
            otype = defs[key]["type"]
            if key == focused:
                out.append({"name": key, "type": otype, "value": str(value), "focused": True})
                continue
            if otype == 11:  # attachment
                att = self._cdn_attachment(channel.id, value)
                resolved.setdefault("attachments", {})[att["id"]] = att
                value = att["id"]
            elif otype == 6:  # user
                guild = self.guilds[channel.guild_id]
                resolved.setdefault("users", {})[str(value.id)] = value.payload()
                if value.id in guild.members:
                    member = {**p.member_payload(guild, value, value.id, with_user=False),
                              "permissions": str(guild.permissions_of(value.id))}
                    resolved.setdefault("members", {})[str(value.id)] = member
                value = str(value.id)
            elif otype == 7:  # channel
                resolved.setdefault("channels", {})[str(value.id)] = {**value.payload(), "permissions": "0"}
                value = str(value.id)
            elif otype == 3 and not isinstance(value, str) or otype == 5 and not isinstance(value, bool) \
                    or otype == 4 and not isinstance(value, int) or otype == 10 and not isinstance(value, (int, float)):
                raise TypeError(f"/{name} option {key!r} has type {otype}; got {value!r}")
            out.append({"name": key, "type": otype, "value": value})
        return out

    # --- REST plumbing ---------------------------------------------------------------------

    def _check(self, check: Callable, *args) -> None:
        """Run a spec check; violations are recorded (the fixtures fail the test in teardown)."""
        try:
            check(*args)
        except spec.SpecViolation as e:
            self.spec_violations.append(str(e))

    async def _record(self, request: web.Request, route: str | None) -> RecordedRequest:
        body, files = None, []
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append(SentFile(part.name, part.filename, bytes(await part.read()),
                                          part.headers.get("Content-Type")))
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        rec = RecordedRequest(
            request.method, request.path[len(API):], route, dict(request.query), dict(request.headers),
            body, files, asyncio.get_running_loop().time(),
        )
        self.requests.append(rec)
        return rec

    def _endpoint(self, route: str, handler: Callable[..., Awaitable[tuple[int, Any]]]):
        async def endpoint(request: web.Request) -> web.Response:
            rec = await self._record(request, route)
            headers: dict[str, str] = {}
            fault = next((f for f in self._faults if f.served < f.times and rec.matches(f.method, f.path)), None)
            token_in_url = route.startswith(("/interactions/", "/webhooks/"))  # these carry no Authorization
            if not token_in_url and request.headers.get("Authorization") != f"Bot {self.token}":
                status, body = 401, {"message": "401: Unauthorized", "code": 0}
            elif fault is not None:
                fault.served += 1
                status, body, headers = fault.status, fault.body, fault.headers
            else:
                self._check(spec.check_request, rec.method, route, rec.json)
                try:
                    status, body = await handler(rec, **request.match_info)
                except DiscordError as e:
                    status, body = e.status, {"message": e.message, "code": e.code}
            self._check(spec.check_response, rec.method, route, status, body)
            rec.status, rec.response = status, body
            self._notify()
            return _json_response(status, body, headers)

        return endpoint

    async def _unknown_route(self, request: web.Request) -> web.Response:
        rec = await self._record(request, None)
        rec.status, rec.response = 404, {"message": "404: Not Found", "code": 0}
        self.unhandled.append(rec)
        self._notify()
        return _json_response(404, rec.response)

    async def _cdn_get(self, request: web.Request) -> web.Response:
        self.cdn_downloads.append(request.path)
        self._notify()
        if request.path not in self.cdn:
            return web.Response(status=404)
        data, content_type = self.cdn[request.path]
        return web.Response(body=data, content_type=content_type or "application/octet-stream")

    def _routes(self) -> list[tuple[str, str, Callable]]:
        # Paths are the spec's templates; "@original" is listed before "{message_id}" so it wins.
        wh = "/webhooks/{webhook_id}/{webhook_token}"
        return [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/applications/{application_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/commands", self._put_commands),
            ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("GET", "/channels/{channel_id}/messages", self._list_messages),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("POST", "/interactions/{interaction_id}/{interaction_token}/callback", self._interaction_callback),
            ("POST", wh, self._followup),
            ("GET", wh + "/messages/@original", self._webhook_message),
            ("PATCH", wh + "/messages/@original", self._webhook_message),
            ("DELETE", wh + "/messages/@original", self._webhook_message),
            ("GET", wh + "/messages/{message_id}", self._webhook_message),
            ("PATCH", wh + "/messages/{message_id}", self._webhook_message),
            ("DELETE", wh + "/messages/{message_id}", self._webhook_message),
        ]

    # --- REST handlers: identity ---------------------------------------------------------------

    async def _get_me(self, rec):
        return 200, {**self.bot_user.payload(), "mfa_enabled": False, "locale": "en-US", "verified": True, "email": None}

    async def _get_application(self, rec):
        return 200, {
            "id": str(self.application_id), "name": self.bot_user.username, "icon": None, "description": "",
            "type": None, "verify_key": "0" * 64, "flags": 0, "flags_new": "0", "redirect_uris": [],
            "interactions_endpoint_url": None,  # else discord.py warns that interactions won't come over the gateway
            "role_connections_verification_url": None, "owner": self.owner.payload(),
            "approximate_guild_count": len(self.guilds), "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0, "explicit_content_filter": 0, "team": None,
            "eligible_oauth2_scopes": ["bot", "applications.commands"], "bot_public": True,
            "bot_require_code_grant": False, "bot": self.bot_user.payload(), "rpc_origins": [], "tags": [],
        }

    async def _get_gateway_bot(self, rec):
        return 200, {
            "url": self.gateway_url, "shards": self.recommended_shards,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        }

    # --- application commands ------------------------------------------------------------------

    async def _get_commands(self, rec, application_id, guild_id=None):
        return 200, self.commands.get(int(guild_id) if guild_id else None, [])

    async def _put_commands(self, rec, application_id, guild_id=None):
        if int(application_id) != self.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        gid = int(guild_id) if guild_id else None
        if gid is not None and gid not in self.guilds:
            raise DiscordError(404, 10004, "Unknown Guild")
        previous = {c["name"]: c["id"] for c in self.commands.get(gid, [])}
        synced = []
        for cmd in _strip_nulls(rec.json or []):
            permissions = cmd.get("default_member_permissions")  # a bitfield; discord.py sends an int
            out = {
                "id": previous.get(cmd["name"]) or str(self.ids.next()),
                "application_id": str(self.application_id),
                "version": str(self.ids.next()),
                "default_member_permissions": None if permissions is None else str(permissions),  # Discord answers a string
                "type": cmd.get("type", 1),
                "name": cmd["name"],
                "description": cmd.get("description", ""),
                "options": cmd.get("options", []),
                "nsfw": cmd.get("nsfw", False),
                "contexts": cmd.get("contexts"),
                "integration_types": cmd.get("integration_types", [0]),
            }
            for key in ("name_localizations", "description_localizations"):
                if key in cmd:
                    out[key] = cmd[key]
            if gid is not None:
                out["guild_id"] = str(gid)
            synced.append(out)
        self.commands[gid] = synced
        return 200, synced

    # --- channels and messages -------------------------------------------------------------------

    async def _get_channel(self, rec, channel_id):
        return 200, self.channel_by_id(int(channel_id)).payload()

    def _message(self, channel_id: int, message_id: int) -> dict:
        msg = self.messages.get(message_id)
        if msg is None or int(msg["channel_id"]) != channel_id:
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    async def _list_messages(self, rec, channel_id):
        self.channel_by_id(int(channel_id))
        q = rec.query
        found = sorted((m for m in self.messages.values() if m["channel_id"] == channel_id),
                       key=lambda m: int(m["id"]), reverse=True)
        if "before" in q:
            found = [m for m in found if int(m["id"]) < int(q["before"])]
        if "after" in q:
            found = [m for m in found if int(m["id"]) > int(q["after"])]
        return 200, [self._public(m) for m in found[: int(q.get("limit", 50))]]

    async def _get_message(self, rec, channel_id, message_id):
        return 200, self._public(self._message(int(channel_id), int(message_id)))

    @staticmethod
    def _public(msg: dict) -> dict:
        """REST message objects carry no gateway-only ``member`` field."""
        return {k: v for k, v in msg.items() if k != "member"}

    async def _create_message(self, rec, channel_id):
        channel = self.channel_by_id(int(channel_id))
        msg = await self._new_bot_message(channel, rec, via="channel")
        return 200, self._public(msg.data)

    async def _edit_message(self, rec, channel_id, message_id):
        msg = self._bot_message(int(message_id), int(channel_id))
        await self._edit_bot_message(msg, rec)
        return 200, self._public(msg.data)

    async def _delete_message(self, rec, channel_id, message_id):
        msg = self._message(int(channel_id), int(message_id))
        await self._delete(msg)
        return 204, None

    async def _typing(self, rec, channel_id):
        self.channel_by_id(int(channel_id))
        return 204, None

    def _bot_message(self, message_id: int, channel_id: int | None = None) -> BotMessage:
        for msg in self.bot_messages:
            if msg.id == message_id and not msg.deleted and channel_id in (None, msg.channel_id):
                return msg
        if message_id in self.messages:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        raise DiscordError(404, 10008, "Unknown Message")

    def _attachments_from(self, rec: RecordedRequest, channel_id: int, keep: list[dict]) -> list[dict]:
        """Existing attachments listed in the body's ``attachments`` (all if absent), plus uploaded files."""
        body = rec.json or {}
        if "attachments" in body and body["attachments"] is not None:
            listed = {str(a.get("id")) for a in body["attachments"]}
            keep = [a for a in keep if a["id"] in listed]
        new = [self._cdn_attachment(channel_id, Attachment(f.filename, f.data, f.content_type)) for f in rec.files]
        return keep + new

    async def _new_bot_message(self, channel: Channel, rec: RecordedRequest, *, via: str, body: dict | None = None,
                               flags: int = 0, interaction: InteractionRecord | None = None) -> BotMessage:
        body = (rec.json or {}) if body is None else body
        guild = self.guilds[channel.guild_id]
        reference = referenced = None
        ref = body.get("message_reference")
        if ref and ref.get("message_id"):
            referenced = self.messages.get(int(ref["message_id"]))
            if referenced is None and ref.get("fail_if_not_exists", True):
                raise DiscordError(400, 50035, "Invalid Form Body (message_reference: Unknown message)")
            reference = {"type": ref.get("type", 0), "channel_id": str(ref.get("channel_id") or channel.id),
                         "message_id": str(ref["message_id"]), "guild_id": str(guild.id)}
        content = body.get("content") or ""
        data = p.message_payload(
            id=self.ids.next(), channel=channel, author=self.bot_user, guild=guild, content=content,
            mentions=[u for u in self.users.values() if re.search(rf"<@!?{u.id}>", content)],
            attachments=self._attachments_from(rec, channel.id, []),
            embeds=[{"type": "rich", **e} for e in body.get("embeds") or []],
            flags=flags | ((body.get("flags") or 0) & p.EPHEMERAL),
            reference=reference, referenced_message=self._public(referenced) if referenced else None,
            webhook_id=self.application_id if via == "followup" else None,
            application_id=self.application_id if via != "channel" else None,
        )
        msg = BotMessage(int(data["id"]), channel.id, guild.id, via, data, list(rec.files), [body],
                         interaction.id if interaction else None)
        self.messages[msg.id] = data
        self.bot_messages.append(msg)
        if not msg.ephemeral:  # Discord echoes the bot's own messages over the gateway
            await self.gateway.dispatch("MESSAGE_CREATE", data, guild.id, required=False)
        return msg

    async def _edit_bot_message(self, msg: BotMessage, rec: RecordedRequest) -> None:
        body = rec.json or {}
        if "content" in body:
            msg.data["content"] = body["content"] or ""
        if "embeds" in body:
            msg.data["embeds"] = [{"type": "rich", **e} for e in body["embeds"] or []]
        msg.data["attachments"] = self._attachments_from(rec, msg.channel_id, msg.data["attachments"])
        msg.data["flags"] &= ~p.LOADING
        msg.data["edited_timestamp"] = p.timestamp()
        msg.files.extend(rec.files)
        msg.bodies.append(body)
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_UPDATE", msg.data, msg.guild_id, required=False)

    async def _delete(self, msg: dict) -> None:
        mid = int(msg["id"])
        self.messages.pop(mid)
        for bot_msg in self.bot_messages:
            if bot_msg.id == mid:
                bot_msg.deleted = True
        d = {"id": msg["id"], "channel_id": msg["channel_id"], "guild_id": msg.get("guild_id")}
        await self.gateway.dispatch("MESSAGE_DELETE", d, int(msg["guild_id"]), required=False)

    # --- interactions ----------------------------------------------------------------------------

    def _interaction_for(self, interaction_id: str, token: str) -> InteractionRecord:
        record = self.interactions.get(int(interaction_id))
        if record is None or record.token != token:
            raise DiscordError(404, 10062, "Unknown interaction")
        return record

    def _interaction_by_webhook(self, webhook_id: str, token: str) -> InteractionRecord:
        record = next((r for r in self.interactions.values() if r.token == token), None)
        if record is None or int(webhook_id) != self.application_id or not record.callbacks:
            raise DiscordError(404, 10015, "Unknown Webhook")
        return record

    async def _interaction_callback(self, rec, interaction_id, interaction_token):
        record = self._interaction_for(interaction_id, interaction_token)
        if record.callbacks:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        body = rec.json or {}
        record.callbacks.append(body)
        kind, data = body.get("type"), body.get("data") or {}
        summary = {"id": str(record.id), "type": record.payload["type"],
                   "response_message_loading": False, "response_message_ephemeral": False}
        response: dict = {"interaction": summary}
        if kind in (4, 5):  # message now, or deferred "thinking..." placeholder
            channel = self.channel_by_id(int(record.payload["channel_id"]))
            msg = await self._new_bot_message(channel, rec, via="interaction", body=data if kind == 4 else {},
                                              flags=(data.get("flags") or 0) | (p.LOADING if kind == 5 else 0),
                                              interaction=record)
            record.original = msg
            summary.update(response_message_id=str(msg.id), response_message_loading=kind == 5,
                           response_message_ephemeral=msg.ephemeral)
            if kind == 4:  # per the spec, no resource for a deferral
                response["resource"] = {"type": 4, "message": self._public(msg.data)}
        elif kind not in (6, 8, 9):
            raise DiscordError(400, 50035, f"Invalid Form Body (callback type {kind} is not supported by the fake)")
        return 200, response

    async def _followup(self, rec, webhook_id, webhook_token):
        record = self._interaction_by_webhook(webhook_id, webhook_token)
        channel = self.channel_by_id(int(record.payload["channel_id"]))
        msg = await self._new_bot_message(channel, rec, via="followup", interaction=record)
        record.followups.append(msg)
        if rec.query.get("wait") in ("1", "true", "True"):
            return 200, self._public(msg.data)
        return 204, None

    async def _webhook_message(self, rec, webhook_id, webhook_token, message_id="@original"):
        record = self._interaction_by_webhook(webhook_id, webhook_token)
        if message_id == "@original":
            msg = record.original
        else:
            msg = next((m for m in record.followups if m.id == int(message_id)), None)
        if msg is None or msg.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        if rec.method == "PATCH":
            await self._edit_bot_message(msg, rec)
        elif rec.method == "DELETE":
            await self._delete(msg.data)
            return 204, None
        return 200, self._public(msg.data)
