"""What the bot's chat replies say: an answer with its sources, split into Discord-sized messages.

Plain text in, plain text out; the chat cog sends and edits the messages.
"""

from __future__ import annotations

import re
from collections import defaultdict

from bot.pipeline import Done
from bot.prompt import Source

MESSAGE_LIMIT = 2000  # characters in one Discord message
CURSOR = " ▌"  # ends the text while the answer is still being written
_FENCE = re.compile(r"```(\w*)")
_CLOSE = "\n```"


def queued_text(position: int) -> str:
    return f"⏳ Busy answering others: you're #{position} in line."


def streaming_text(answer: str) -> str:
    return (answer.rstrip() or "…") + CURSOR


def final_text(done: Done) -> str:
    """The answer (or the refusal / error text), with the sources it used listed at the end."""
    text = done.text.strip() or "I have no answer to that."
    if done.status != "answer":
        return text
    if done.sources:
        return f"{text}\n\n-# Sources: {_list_sources(done.sources)}"
    if done.passages:
        return f"{text}\n\n-# Sources consulted: {_list_sources(done.passages)}"
    return f"{text}\n\n-# No passage of this server's documents matched the question."


def _list_sources(sources: tuple[Source, ...]) -> str:
    """"[1] a.pdf p. 3 · [2] b.pdf p. 1", one entry per file and page."""
    pages: dict[tuple[str, int], list[int]] = defaultdict(list)
    for s in sources:
        pages[(s.file, s.page)].append(s.number)
    return " · ".join(f"[{']['.join(map(str, numbers))}] {file} p. {page}" for (file, page), numbers in pages.items())


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut text into messages of at most `limit` characters.

    Cuts at a paragraph break, else a line break, else a space, outside code blocks where it can;
    a code block longer than a message is closed at the cut and reopened (same language) in the next.
    Only a single word longer than a message is cut inside.
    """
    chunks = []
    while len(text) > limit:
        cut, skip = _cut(text, limit - len(_CLOSE))
        head, text = text[:cut].rstrip(), text[cut + skip:]
        language = _open_fence(head)
        if language is not None:
            head += _CLOSE
            text = f"```{language}\n{text}"
        chunks.append(head)
    chunks.append(text)
    return chunks


def _cut(text: str, room: int) -> tuple[int, int]:
    """(where to cut, length of the separator dropped there), for a head of at most `room` characters."""
    window = text[:room + 1]  # a separator right after the last allowed character is fine
    for separator in ("\n\n", "\n", " "):
        i = window.rfind(separator)
        while i > room // 4:  # not so early that the message is mostly empty
            if _open_fence(text[:i]) is None:
                return i, len(separator)
            i = window.rfind(separator, 0, i)
    for separator in ("\n", " "):  # the cut must fall inside a code block
        i = window.rfind(separator)
        if i > 0:
            return i, len(separator)
    return room, 0


def _open_fence(text: str) -> str | None:
    """The language of the code block left open at the end of text ("" if none given), or None."""
    fences = _FENCE.findall(text)
    return fences[-1] if len(fences) % 2 else None
