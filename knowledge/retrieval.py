"""Question -> ranked passages: vector and word search fused, then documents the question names
are preferred.

Why the last step: a server's knowledge base often holds look-alike documents (the same report for
several companies or quarters). Their passages read almost the same, so neither vectors nor BM25
can tell which one a question is about. But questions usually name their document the way its file
name or cover page does ("Apple's Q3 2023 10-Q"), so each document gets a profile (file name plus
the start of its first page) and passages from documents whose profile matches the question's rare
words rank higher.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9&.\-]*")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers him his how i if in into is it its itself just me more most my no nor not
    now of off on once only or other our ours out over own same she should so some such than that the
    their theirs them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours s t""".split()
)
RRF_K = 60
DOC_WEIGHT = 1.0  # a question that names one document fully prefers it (tuned on the tune split)


# Reports are named by quarter codes ("2023 Q1") while people write the words ("first quarter").
_QUARTERS = re.compile(r"\b(first|second|third|fourth|1st|2nd|3rd|4th)\s+(?:fiscal\s+)?quarter\b")
_QUARTER_CODE = {"first": "q1", "1st": "q1", "second": "q2", "2nd": "q2", "third": "q3", "3rd": "q3",
                 "fourth": "q4", "4th": "q4"}


def words(text: str) -> list[str]:
    """Lower-case word tokens without stopwords; numbers keep their separators (1,234.5)."""
    text = _QUARTERS.sub(lambda m: f"{m.group(0)} {_QUARTER_CODE[m.group(1)]}", text.lower())
    return [w for w in _WORD.findall(text) if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


def query_terms(question: str) -> list[str]:
    """The question's distinct content words, for word search."""
    return list(dict.fromkeys(words(question)))


def doc_label(file_name: str) -> str:
    """'2023_Q3-AAPL.pdf' -> '2023 Q3 AAPL': the words a file name gives a passage."""
    stem = re.sub(r"\.pdf$", "", file_name, flags=re.IGNORECASE)
    return re.sub(r"[_\-.]+", " ", stem).strip()


@dataclass(frozen=True)
class Candidate:
    chunk_id: str
    doc_id: str
    score: float


def naming_terms(label: str, first_page: str) -> set[str]:
    """The words that can name a document: all of its file label, and the proper nouns, codes and
    numbers of its first page ("Apple", "NVIDIA", "10-Q", "2023"), not its ordinary words. A word
    the page also writes in lower case is an ordinary one ("Zip Code" beside "area code")."""
    tokens = _NAME.findall(first_page)
    ordinary = {w for w in tokens if w.isalpha() and w.islower()}
    names = {w for w in tokens if w.lower() not in ordinary}
    return set(words(label)) | set(words(" ".join(names)))


_MONTHS = {m: i for i, m in enumerate(
    "january february march april may june july august september october november december".split(), 1)}
_DATE = re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+\d{1,2},?\s+((?:19|20)\d\d)\b", re.IGNORECASE)
_QUARTER_YEAR = re.compile(r"\bq([1-4])[\s_-]*((?:19|20)\d\d)\b|\b((?:19|20)\d\d)[\s_-]*q([1-4])\b", re.IGNORECASE)
_RECENT_BOOST = 0.5
_HOLDING_COUNTED = 10  # documents holding a name are counted up to 10 times those it names
# "the latest results", "its most recent 10-Q", "last quarter's call"; not "last updated", "current liabilities".
_RECENT = re.compile(r"\b(?:latest|most recent|newest)\b|\b(?:last|current)\s+(?:[\w-]+\s+)?(?:quarter|quarterly|"
                     r"report|filing|10-?[qk]|version|edition|release|period|document|call|transcript)\b", re.IGNORECASE)


def document_period(label: str, first_page: str) -> int | None:
    """When a document is from, in months since year 0: its file label's quarter ("2023 Q3"), else
    the latest full date on its first page ("July 1, 2023"). None if it says neither."""
    for m in _QUARTER_YEAR.finditer(label):
        quarter, year = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        return int(year) * 12 + int(quarter) * 3
    dates = [int(m.group(2)) * 12 + _MONTHS[m.group(1).lower()] for m in _DATE.finditer(first_page)]
    return max(dates, default=None)


class DocumentRouter:
    """Scores how strongly a question names each document, from the documents' naming terms.

    A question that asks for the latest/most recent one also points at the newest of the documents
    it names (or of all documents, if it names none).
    """

    def __init__(self, terms: dict[str, set[str]], periods: dict[str, int | None],
                 documents_holding: Callable[[str, int], int]):
        """documents_holding(term, at_most): how many documents' text holds the term (not only their
        names), counted up to at_most."""
        self._terms = terms
        self._periods = periods
        self._named_by = Counter(t for terms in self._terms.values() for t in terms)
        n = len(self._terms)
        # Terms in every document name none of them (idf 0); rarer terms weigh more.
        self._idf = {t: math.log(n / c) for t, c in self._named_by.items()}
        self._documents_holding = documents_holding
        self._weights: dict[str, float] = {}

    def _weight(self, term: str) -> float:
        """The term's idf, times the share of the documents using it that it names: "Number" on one
        company's cover page names its filings only weakly when every filing says "number"."""
        if term not in self._weights:
            named_by = self._named_by[term]
            holding = max(self._documents_holding(term, _HOLDING_COUNTED * named_by), named_by)
            self._weights[term] = self._idf[term] * named_by / holding
        return self._weights[term]

    def scores(self, question: str) -> dict[str, float]:
        """doc_id -> how strongly the question points at this document: the share of its naming
        power (0 to 1), plus _RECENT_BOOST for the newest one when it asks for the latest."""
        weights = {t: self._weight(t) for t in set(words(question)) & self._idf.keys() if self._idf[t] > 0}
        total = sum(weights.values())
        # Names that together rule out less than half of the documents point at them only weakly.
        strength = min(1.0, total / math.log(2))
        named = {doc_id: strength * sum(w for t, w in weights.items() if t in terms) / total
                 for doc_id, terms in self._terms.items()} if total > 0 else {}
        if not _RECENT.search(question):
            return named
        best = max(named.values(), default=0.0)
        candidates = [d for d in self._terms if named.get(d, 0.0) >= best / 2 and self._periods.get(d) is not None]
        newest = max((self._periods[d] for d in candidates), default=None)
        return {d: named.get(d, 0.0) + (_RECENT_BOOST if d in candidates and self._periods[d] == newest else 0.0)
                for d in self._terms}


def fuse(
    vector_hits: Sequence[tuple[str, float]],
    lexical_hits: Sequence[tuple[str, float]],
    doc_of: dict[str, str],
    doc_scores: dict[str, float],
    doc_weight: float,
) -> list[Candidate]:
    """Reciprocal-rank fusion of the two lists (scaled to [0, 1]) plus the document-name boost."""
    fused: dict[str, float] = {}
    for hits in (vector_hits, lexical_hits):
        for rank, (chunk_id, _) in enumerate(hits):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    best_possible = 2.0 / (RRF_K + 1)
    out = []
    for chunk_id, score in fused.items():
        doc_id = doc_of.get(chunk_id)
        if doc_id is None:
            continue
        out.append(Candidate(chunk_id, doc_id, score / best_possible + doc_weight * doc_scores.get(doc_id, 0.0)))
    out.sort(key=lambda c: c.score, reverse=True)
    return out


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
