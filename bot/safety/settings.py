"""Per-server safety settings and the refusal log, in SQLite (data_dir/safety.sqlite3).

One JSON row per server holds what its admins changed; everything else comes from [safety] in the
config. All methods block; async callers use asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Level = Literal["off", "standard", "strict"]
LEVELS = ("off", "standard", "strict")
LAYERS = ("rules", "classifier", "guard")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS guild_settings (guild TEXT PRIMARY KEY, settings TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, guild TEXT NOT NULL, channel TEXT NOT NULL, user_id TEXT NOT NULL,
    stage TEXT NOT NULL, layer TEXT NOT NULL, category TEXT NOT NULL, text TEXT
);
CREATE INDEX IF NOT EXISTS refusals_by_guild ON refusals (guild, id);
"""


@dataclass(frozen=True)
class GuildSettings:
    level: Level = "standard"
    refusal: str = ""  # empty: safety.refusal from the config
    blocked_terms: tuple[str, ...] = ()
    blocked_patterns: tuple[str, ...] = ()
    log_channel: str = ""  # where refusals are posted for moderators; empty: not posted
    log_text: bool = False  # keep the refused message's text in the log
    rules: bool = True  # layer 1 on
    classifier: bool = True  # layer 2 on
    guard: bool = True  # layer 3 on (when the bot has a guard model: safety.guard_model)
    disabled_categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    at: float
    guild: str
    channel: str
    user_id: str
    stage: Literal["input", "output"]
    layer: str  # rules, classifier, guard
    category: str  # S1..S14, jailbreak, blocked, unparsed
    text: str | None  # only when the server's log_text is on
    log_channel: str = ""


class SettingsStore:
    def __init__(self, path: Path, default: GuildSettings):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.default = default
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._cache: dict[str, GuildSettings] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)

    def get(self, guild: str) -> GuildSettings:
        with self._lock:
            if guild not in self._cache:
                row = self._db.execute("SELECT settings FROM guild_settings WHERE guild = ?", (guild,)).fetchone()
                self._cache[guild] = self._decode(row[0]) if row else self.default
            return self._cache[guild]

    def put(self, guild: str, settings: GuildSettings) -> None:
        changed = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                   if getattr(settings, f.name) != getattr(self.default, f.name)}
        with self._lock:
            self._db.execute("INSERT INTO guild_settings VALUES (?, ?, ?) ON CONFLICT(guild) DO UPDATE SET "
                             "settings = excluded.settings, updated_at = excluded.updated_at",
                             (guild, json.dumps(changed), time.time()))
            self._cache[guild] = settings

    def _decode(self, text: str) -> GuildSettings:
        known = {f.name for f in dataclasses.fields(GuildSettings)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items() if k in known}
        return dataclasses.replace(self.default, **values)

    def log(self, refusal: Refusal) -> None:
        with self._lock:
            self._db.execute("INSERT INTO refusals (at, guild, channel, user_id, stage, layer, category, text) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (refusal.at, refusal.guild, refusal.channel, refusal.user_id, refusal.stage, refusal.layer,
                              refusal.category, refusal.text))

    def refusals(self, guild: str, limit: int = 20) -> list[Refusal]:
        """The server's last `limit` refusals, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT at, guild, channel, user_id, stage, layer, category, text FROM refusals "
                                    "WHERE guild = ? ORDER BY id DESC LIMIT ?", (guild, limit)).fetchall()
        return [Refusal(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
