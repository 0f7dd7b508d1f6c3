"""Hazard categories: the MLCommons taxonomy used by Llama Guard 3 (S1-S14), plus the filter's own three."""

from __future__ import annotations

CATEGORIES = {
    "S1": "Violent crimes",
    "S2": "Non-violent crimes",
    "S3": "Sex-related crimes",
    "S4": "Child sexual exploitation",
    "S5": "Defamation",
    "S6": "Specialized advice",
    "S7": "Privacy",
    "S8": "Intellectual property",
    "S9": "Indiscriminate weapons",
    "S10": "Hate",
    "S11": "Suicide and self-harm",
    "S12": "Sexual content",
    "S13": "Elections",
    "S14": "Code interpreter abuse",
    "jailbreak": "Attempts to make the bot ignore its rules (role-play wrappers, 'ignore previous instructions')",
    "blocked": "A term or pattern this server's admins blocked",
    "unparsed": "The guard model's verdict could not be read (counted as unsafe unless this is off)",
}
HAZARDS = tuple(c for c in CATEGORIES if c.startswith("S"))  # what the classifier predicts


def check_category(name: str) -> str:
    """The canonical name (S1..S14, jailbreak, blocked); ValueError naming the allowed ones."""
    key = name.strip()
    key = key.upper() if key[:1] in "sS" and key[1:].isdigit() else key.lower()
    if key not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; choose one of: {', '.join(CATEGORIES)}")
    return key
