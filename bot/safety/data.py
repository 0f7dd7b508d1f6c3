"""Readers of the public safety data sets (a folder like shared/data/safety-dev) and of --input files."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

# Source labels -> hazard categories (S1..S14); rows without one train only the harm head.
_CATEGORY = {
    # HarmBench SemanticCategory
    "copyright": "S8", "cybercrime_intrusion": "S2", "chemical_biological": "S9", "illegal": "S2",
    "misinformation_disinformation": "S5", "harmful": "S1", "harassment_bullying": "S10",
    # JailbreakBench category
    "Harassment/Discrimination": "S10", "Malware/Hacking": "S2", "Physical harm": "S1", "Economic harm": "S2",
    "Fraud/Deception": "S2", "Disinformation": "S5", "Sexual/Adult content": "S12", "Privacy": "S7",
    "Expert advice": "S6", "Government decision-making": "S2",
    # SimpleSafetyTests harm_area
    "Suicide, Self-Harm, and Eating Disorders": "S11", "Physical harm and Violence": "S1",
    "Illegal and Highly Regulated items": "S2", "Scams and fraud": "S2", "Child safety": "S4",
}

Row = tuple[str, int, str | None]  # (text, 1 harmful / 0 benign, category)


class InputError(ValueError):
    """A prompts file that cannot be read; the message is one line."""


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def dev_sets(folder: Path, templates_per_question: int = 5) -> dict[str, list[Row]]:
    """The files of the dev folder, by name. gptfuzz: each question inside `templates_per_question`
    templates (a fixed draw) rather than the full 77 x 100 product."""
    folder = Path(folder)
    sets = {
        "harmbench_val.csv": [(r["Behavior"], 1, _CATEGORY.get(r["SemanticCategory"])) for r in _csv(folder / "harmbench_val.csv")],
        "simplesafetytests.csv": [(r["prompts_final"], 1, _CATEGORY.get(r["harm_area"])) for r in _csv(folder / "simplesafetytests.csv")],
        "jbb_harmful.csv": [(r["goal"], 1, _CATEGORY.get(r["category"])) for r in _csv(folder / "jbb_harmful.csv")],
        "jbb_benign.csv": [(r["goal"], 0, None) for r in _csv(folder / "jbb_benign.csv")],
        "gptfuzz_questions.csv": [(r["text"], 1, None) for r in _csv(folder / "gptfuzz_questions.csv")],
    }
    templates = [r["text"] for r in _csv(folder / "gptfuzz_templates.csv")]
    rng = random.Random(0)
    sets["gptfuzz_templates.csv"] = [(rng.choice(templates).replace("[INSERT PROMPT HERE]", q), 1, None)
                                     for q, _, _ in sets["gptfuzz_questions.csv"] for _ in range(templates_per_question)]
    return sets


# Leave-one-group-out: twins and template+question combinations stay in one group.
GROUPS = {"harmbench": ["harmbench_val.csv"], "simplesafetytests": ["simplesafetytests.csv"],
          "jbb": ["jbb_harmful.csv", "jbb_benign.csv"], "gptfuzz": ["gptfuzz_questions.csv", "gptfuzz_templates.csv"]}


def read_prompts(path: Path, column: str | None = None) -> list[str]:
    """Prompts from a CSV (a column: `column`, else the only one or a usual name), JSON Lines or a JSON
    array (strings, or objects and a field as for CSV) or plain text (one per line). Raises InputError
    with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    if not text.strip():
        return []
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        fields = list(rows[0].keys()) if rows else next(csv.reader(text.splitlines()), [])
        return [r[_pick(fields, column, path)] or "" for r in rows]
    if suffix in (".jsonl", ".ndjson", ".json"):
        return [_prompt(obj, column, path, n) for n, obj in _json_rows(text, path)]
    if column:
        raise InputError(f"--column only applies to CSV and JSON files, not {path.name}")
    return [line for line in text.splitlines() if line.strip()]


_USUAL = ("prompt", "text", "goal", "behavior", "question", "prompts_final", "query", "instruction", "input",
          "forbidden_prompt", "turns")


def _json_rows(text: str, path: Path) -> list[tuple[int | None, object]]:
    """(line number or None, value) of a file holding one JSON array, or of JSON Lines."""
    if text.lstrip().startswith("["):
        try:
            return [(None, row) for row in json.loads(text)]
        except json.JSONDecodeError:
            pass  # JSON Lines whose rows are arrays
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise InputError(f"{path} line {n} is not JSON") from None
    return rows


def _prompt(obj: object, column: str | None, path: Path, line: int | None) -> str:
    """The prompt of one JSON row: a string, or an object's field; a list (a conversation's turns,
    as strings or {"role", "content"} messages) gives its user turns, one per line."""
    if isinstance(obj, dict):
        obj = obj.get(_pick(list(obj), column, path, line))
    elif not isinstance(obj, (str, list)):
        raise InputError(f"{_where(path, line)}: {json.dumps(obj)[:40]} is not a prompt")
    if isinstance(obj, list):
        return "\n".join(str(t.get("content", "")) if isinstance(t, dict) else str(t)
                         for t in obj if not isinstance(t, dict) or t.get("role", "user") == "user")
    return str(obj or "")


def _where(path: Path, line: int | None) -> str:
    return f"{path} line {line}" if line else str(path)


def _pick(fields: list[str], column: str | None, path: Path, line: int | None = None) -> str:
    where = _where(path, line)
    if column:
        if column not in fields:
            raise InputError(f"{where} has no column {column!r}; columns: {', '.join(fields)}")
        return column
    if len(fields) == 1:
        return fields[0]
    lower = {f.lower(): f for f in fields}
    for name in _USUAL:
        if name in lower:
            return lower[name]
    raise InputError(f"{where}: say which column holds the prompts with --column; columns: {', '.join(fields)}")
