"""Per-channel memory in SQLite (WAL): the exchanges of each channel and its persona.

A channel id is the key; a thread is its own channel. One row per exchange: the question (author id and
display name, time) is committed when work on it starts; the answer, the sources it cites and the
excerpts the model was shown (bot.prompt puts them back in later prompts) are written in one UPDATE
that also marks the row complete. A crash mid-answer (even kill -9) therefore keeps the question,
never stores half an answer, and the row is marked "interrupted" the next time memory is opened. Only
complete exchanges go back into prompts.

All methods block (SQLite); async callers use asyncio.to_thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from bot.prompt import Excerpt, Source, Turn

Status = Literal["pending", "complete", "refused", "error", "interrupted"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT NOT NULL,
    question TEXT NOT NULL,
    asked_at REAL NOT NULL,
    answer TEXT,
    sources TEXT NOT NULL DEFAULT '[]',
    answered_at REAL,
    status TEXT NOT NULL DEFAULT 'pending',
    excerpts TEXT  -- JSON; NULL in exchanges stored before excerpts were kept
);
CREATE INDEX IF NOT EXISTS exchanges_by_channel ON exchanges (channel, id);
CREATE TABLE IF NOT EXISTS personas (
    channel TEXT PRIMARY KEY,
    persona TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Exchange:
    id: int
    channel: str
    author_id: str
    author_name: str
    question: str
    asked_at: float
    answer: str | None
    sources: list[Source]
    answered_at: float | None
    status: Status
    excerpts: tuple[Excerpt, ...] | None


class Memory:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses no commit
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            if "excerpts" not in {row[1] for row in self._db.execute("PRAGMA table_info(exchanges)")}:
                self._db.execute("ALTER TABLE exchanges ADD COLUMN excerpts TEXT")  # a memory from an older version
            self._db.execute("UPDATE exchanges SET status = 'interrupted' WHERE status = 'pending'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # --- exchanges ------------------------------------------------------------------------

    def start(self, channel: str, author_id: str, author_name: str, question: str) -> int:
        """Commit the question; returns the exchange id for finish()."""
        cursor = self._run("INSERT INTO exchanges (channel, author_id, author_name, question, asked_at) "
                           "VALUES (?, ?, ?, ?, ?)", (str(channel), str(author_id), author_name, question, time.time()))
        return cursor.lastrowid

    def finish(self, exchange_id: int, answer: str | None, sources: list[Source], status: Status = "complete",
               excerpts: list[Excerpt] = ()) -> None:
        """Store the whole answer, its sources, what the model was shown, and the status in one statement."""
        self._run("UPDATE exchanges SET answer = ?, sources = ?, excerpts = ?, answered_at = ?, status = ? WHERE id = ?",
                  (answer, _json(sources), _json(excerpts), time.time(), status, exchange_id))

    def history(self, channel: str, limit: int) -> list[Turn]:
        """The channel's complete exchanges, newest first."""
        rows = self._run("SELECT author_name, question, answer, excerpts, id FROM exchanges WHERE channel = ? AND "
                         "status = 'complete' ORDER BY id DESC LIMIT ?", (str(channel), limit)).fetchall()
        return [Turn(author, question, answer, _excerpts(excerpts), exchange_id)
                for author, question, answer, excerpts, exchange_id in rows]

    def show(self, channel: str, limit: int = 10) -> list[Exchange]:
        """The channel's last `limit` exchanges of any status, oldest first."""
        rows = self._run("SELECT * FROM exchanges WHERE channel = ? ORDER BY id DESC LIMIT ?",
                         (str(channel), limit)).fetchall()
        return [_exchange(row) for row in reversed(rows)]

    def count(self, channel: str) -> int:
        """How many exchanges the channel has, of any status."""
        return self._run("SELECT count(*) FROM exchanges WHERE channel = ?", (str(channel),)).fetchone()[0]

    def reset(self, channel: str) -> int:
        """Forget the channel's exchanges (its persona stays); returns how many were removed."""
        return self._run("DELETE FROM exchanges WHERE channel = ?", (str(channel),)).rowcount

    def export_markdown(self, channel: str) -> str:
        rows = self._run("SELECT * FROM exchanges WHERE channel = ? ORDER BY id", (str(channel),)).fetchall()
        lines = [f"# Conversation in channel {channel}", ""]
        if not rows:
            lines.append("_No messages yet._")
        for e in map(_exchange, rows):
            lines += [f"**{e.author_name}** ({e.author_id}), {_when(e.asked_at)}:", "", _quote(e.question), ""]
            if e.status == "complete":
                lines += [f"**Assistant**, {_when(e.answered_at)}:", "", e.answer or "", ""]
                lines += [f"- [{s.number}] {s.file}, p. {s.page}" for s in e.sources]
            else:
                lines.append(f"_No answer ({e.status})._")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    # --- persona --------------------------------------------------------------------------

    def get_persona(self, channel: str) -> str | None:
        """The channel's own persona, or None when it uses the default (chat.persona)."""
        row = self._run("SELECT persona FROM personas WHERE channel = ?", (str(channel),)).fetchone()
        return row[0] if row else None

    def set_persona(self, channel: str, persona: str) -> None:
        self._run("INSERT INTO personas (channel, persona, updated_at) VALUES (?, ?, ?) ON CONFLICT (channel) "
                  "DO UPDATE SET persona = excluded.persona, updated_at = excluded.updated_at",
                  (str(channel), persona, time.time()))

    def reset_persona(self, channel: str) -> bool:
        return self._run("DELETE FROM personas WHERE channel = ?", (str(channel),)).rowcount > 0


def _exchange(row: tuple) -> Exchange:
    values = list(row)
    values[7] = [Source(**s) for s in json.loads(values[7])]
    values[10] = _excerpts(values[10])
    return Exchange(*values)


def _json(items) -> str:
    return json.dumps([item.__dict__ for item in items])


def _excerpts(stored: str | None) -> tuple[Excerpt, ...] | None:
    return None if stored is None else tuple(Excerpt(**e) for e in json.loads(stored))


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp or 0, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines() or [""])
