"""Pages -> chunks that fit the embedding model's input.

Chunks never cross a page (so every citation names one page) and are packed from whole lines
where possible: in financial reports a line is usually a table row, and cutting one in half
separates a number from its label. Lengths are counted with the embedder's own tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from knowledge.pdf import Page

CountTokens = Callable[[Sequence[str]], list[int]]

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True)
class Chunk:
    id: str
    doc_id: str
    file: str
    page: int
    index: int  # position in the document, 0-based
    text: str


def chunk_pages(
    pages: Sequence[Page],
    *,
    doc_id: str,
    file: str,
    count_tokens: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    pieces = ((page.number, text) for page in pages
              for text in split_page(page.text, count_tokens=count_tokens, max_tokens=max_tokens,
                                     overlap_tokens=overlap_tokens))
    return number_chunks(pieces, doc_id=doc_id, file=file)


def split_page(text: str, *, count_tokens: CountTokens, max_tokens: int, overlap_tokens: int) -> list[str]:
    """One page's text -> the texts of its chunks (ingestion workers run this for their pages)."""
    return _pack(_units(text, count_tokens, max_tokens), max_tokens, overlap_tokens)


def number_chunks(pieces: Iterable[tuple[int, str]], *, doc_id: str, file: str) -> list[Chunk]:
    """(page number, chunk text) pairs in reading order -> chunks with their ids and positions."""
    return [Chunk(f"{doc_id}:{index}", doc_id, file, page, index, text)
            for index, (page, text) in enumerate(pieces)]


def _units(text: str, count_tokens: CountTokens, max_tokens: int) -> list[tuple[str, int]]:
    """Lines with their token counts; a line too long for one chunk is split at sentences, then words."""
    lines = [line for line in text.split("\n") if line.strip()]
    units: list[tuple[str, int]] = []
    for line, n in zip(lines, count_tokens(lines)):
        if n <= max_tokens:
            units.append((line, n))
            continue
        sentences = _SENTENCE_END.split(line)
        for sentence, m in zip(sentences, count_tokens(sentences)):
            if m <= max_tokens:
                units.append((sentence, m))
            else:
                units.extend(_split_words(sentence, m, max_tokens))
    return units


def _split_words(text: str, n_tokens: int, max_tokens: int) -> list[tuple[str, int]]:
    words = text.split()
    # Pieces sized by the word/token ratio of this text, with a margin for uneven words.
    per_piece = max(1, int(len(words) * max_tokens / n_tokens * 0.8))
    pieces = [" ".join(words[i:i + per_piece]) for i in range(0, len(words), per_piece)]
    return [(p, max_tokens) for p in pieces]  # counted as full so each stands alone


def _pack(units: list[tuple[str, int]], max_tokens: int, overlap_tokens: int) -> list[str]:
    """Greedily pack units into chunks; each new chunk repeats the last units of the previous one
    (up to overlap_tokens) so a fact on a boundary is whole in at least one chunk."""
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    size = 0
    for unit in units:
        if current and size + unit[1] > max_tokens:
            chunks.append("\n".join(u[0] for u in current))
            carried: list[tuple[str, int]] = []
            carried_size = 0
            for prev in reversed(current):
                if carried_size + prev[1] > overlap_tokens or carried_size + prev[1] + unit[1] > max_tokens:
                    break
                carried.insert(0, prev)
                carried_size += prev[1]
            current, size = carried, carried_size
        current.append(unit)
        size += unit[1]
    if current:
        chunks.append("\n".join(u[0] for u in current))
    return chunks
