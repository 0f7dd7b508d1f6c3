"""Layer 1: regular expressions, microseconds per message.

  blocked   the terms and patterns a server's admins set (whole-word terms, or Python regexes)
  jailbreak wrappers that tell the bot to drop its rules (DAN, developer mode, "ignore previous
            instructions"); written from the well-known families, not from any test file
  injection instruction-like sentences inside retrieved passages: text in a PDF is data, so such
            sentences are cut out of the passage before it reaches the prompt
"""

from __future__ import annotations

import re
from typing import Iterable

_I = re.IGNORECASE
_PREVIOUS = r"(?:all |any |the |your |my |of |these |those |previous |prior |above |earlier |preceding |former |initial |original )*"
_RULES = r"(?:instructions?|rules|prompts?|guidelines|directions|directives|programming|restrictions|system prompt|context)"
_IGNORE = rf"\b(?:ignore|disregard|forget|override|bypass|skip)\s+{_PREVIOUS}{_RULES}\b"

# Any one of these is a jailbreak attempt at level standard.
JAILBREAK_STRONG = re.compile("|".join([
    _IGNORE,
    r"\bDAN\b(?!\s*(?:brown|river))", r"\bdo anything now\b", r"\bdeveloper mode\b", r"\bjailbr(?:oken|eak) (?:mode|prompt|version)\b",
    r"\byou are (?:now )?jailbroken\b", r"\b(?:without|no|free of|free from) (?:any )?(?:ethical|moral|content) (?:restrictions|guidelines|limits|filters|constraints)\b",
    r"\bunfiltered (?:and|,)? ?(?:amoral|uncensored|unrestricted)\b", r"\b(?:amoral|uncensored|unrestricted) (?:ai|chatbot|assistant|model|character)\b",
    r"\bnever refuses?\b", r"\b(?:will|must|should) not refuse\b", r"\bstay in character\b", r"\bopenai'?s? (?:content )?polic(?:y|ies)\b",
    r"\banti-?dan\b", r"\bno (?:rules|restrictions|filters|limits) (?:at all|whatsoever)\b",
]), _I)
# At level strict, also these milder role-play signals.
JAILBREAK_WEAK = re.compile("|".join([
    r"\b(?:pretend|imagine|act as if) (?:that )?you (?:are|have) (?:no|an? (?:evil|unrestricted|unfiltered))\b",
    r"\bhypothetical (?:response|scenario)\b", r"\b(?:role-?play|roleplay) as\b", r"\bfrom now on,? you\b",
    r"\b(?:without|no) (?:restrictions|filters|censorship)\b", r"\bcontent polic(?:y|ies)\b",
]), _I)

INJECTION = re.compile("|".join([
    _IGNORE,
    r"\b(?:reply|respond|answer|output|print|say|write)\s+(?:only|just|exclusively|nothing but)\b",
    r"\b(?:reply|respond|answer)\s+(?:to (?:every|all|any) (?:question|user|message)s?\s+)?with (?:only )?(?:the (?:word|phrase|text)|[\"'])",
    r"\byou (?:are|will) now\b", r"\bfrom now on,? (?:you|the (?:assistant|bot|ai|model))\b",
    r"\b(?:new|updated|real|actual|hidden) (?:system )?(?:instructions?|prompt)\b", r"\bsystem prompt\b",
    r"\b(?:the |an? )?(?:assistant|ai|chatbot|bot|language model|llm)s? (?:reading this )?(?:must|should|shall|is required to)\b",
    r"\bdo not (?:cite|mention|reveal|tell the user)\b", r"\bto (?:the|any) (?:ai|assistant|model|llm|bot) reading this\b",
    r"\bif you are an? (?:ai|assistant|language model|llm)\b", r"^\s*(?:#+\s*)?(?:system|assistant|instruction)s?\s*:",
    r"<\|?(?:im_start|system|start_header_id)\|?>",
]), _I | re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")


def check_pattern(pattern: str) -> str:
    """A regex an admin may block; ValueError with a one-line reason."""
    if not 0 < len(pattern) <= 200:
        raise ValueError("a pattern must be 1 to 200 characters")
    try:
        re.compile(pattern, _I)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return pattern


def blocked_matcher(terms: Iterable[str], patterns: Iterable[str]) -> re.Pattern | None:
    """One regex for a server's blocked terms (whole words, any case) and patterns, or None."""
    parts = [rf"(?<!\w){re.escape(t)}(?!\w)" for t in terms] + [f"(?:{p})" for p in patterns]
    return re.compile("|".join(parts), _I) if parts else None


def jailbreak(text: str, strict: bool) -> bool:
    return bool(JAILBREAK_STRONG.search(text) or (strict and JAILBREAK_WEAK.search(text)))


def neutralise_instructions(text: str) -> tuple[str, int]:
    """`text` with every sentence that gives instructions to the model replaced by a marker, and how many."""
    removed = 0

    def cut(m: re.Match) -> str:
        nonlocal removed
        if m.group(0).strip() and INJECTION.search(m.group(0)):
            removed += 1
            return "[instruction-like text removed] "
        return m.group(0)

    return _SENTENCE.sub(cut, text), removed
