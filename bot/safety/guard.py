"""Layer 3 (optional): a guard model in GGUF, run by llama.cpp in its own instance, for questions and answers.

Configured with `safety.guard_model` (a path to a GGUF; empty: no layer 3). Two kinds of model:
  Llama Guard 3 (1B or 8B; recognised by its name or chat template)
      asked in its own prompt format, listing only the hazard categories (S1-S14) the server has on;
      it answers "safe" or "unsafe\\nS1,S3".
  any other instruct GGUF (e.g. the chat model's own file)
      asked as a judge through its chat template, with a short prompt, for the same two answers.
Either way llama.cpp samples under a grammar that only admits those answers (greedy, at most
MAX_TOKENS tokens), and the answer is parsed strictly. An answer that still does not parse (cut off,
or llama.cpp failed) fails safe: it is a refusal of category "unparsed", which a server can turn
off with `/safety category unparsed off` to let such messages through instead.

One llama.cpp context is not thread-safe, so every call holds this instance's lock; the guard never
shares the chat model's context. Calls block (tens of ms for Llama Guard 3 1B on a GPU, seconds for
8B on a CPU); the pipeline runs the filter off the event loop.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

log = logging.getLogger(__name__)

N_CTX = 4096  # prompt (categories, question, answer) + verdict; longer texts are cut in the middle
MAX_TOKENS = 40  # the longest answer the grammar admits ("unsafe\nS14,S14,S14,S14,S14") fits
# What the model may answer. GBNF, as llama.cpp reads it.
VERDICT_GRAMMAR = r'''root ::= [\n ]? [\n ]? verdict
verdict ::= "safe" | "unsafe\n" code ("," code){0,4}
code ::= "S" ([1-9] | "1" [0-4])
'''
_VERDICT = re.compile(r"\s{0,2}(safe|unsafe\n(S(?:1[0-4]|[1-9])(?:,S(?:1[0-4]|[1-9])){0,4}))", re.ASCII)

# The category names of Llama Guard 3's prompt format (its model card), by code.
LLAMA_GUARD_3 = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex Crimes", "S4": "Child Exploitation",
    "S5": "Defamation", "S6": "Specialized Advice", "S7": "Privacy", "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons", "S10": "Hate", "S11": "Self-Harm", "S12": "Sexual Content",
    "S13": "Elections", "S14": "Code Interpreter Abuse",
}
Stage = Literal["input", "output"]


class GuardError(RuntimeError):
    """The guard model cannot be loaded; the message names safety.guard_model."""


@dataclass(frozen=True)
class GuardVerdict:
    safe: bool
    categories: tuple[str, ...]  # the codes the model named (S1..S14), in its order; ("unparsed",) on failure
    raw: str  # what the model answered
    ms: float  # time of this call, lock wait included


def latency(timings: Iterable[float]) -> tuple[int, float, float]:
    """(calls measured, p50 ms, p95 ms) over the latest calls; zeros before the first."""
    times = sorted(timings)
    if not times:
        return 0, 0.0, 0.0
    return len(times), times[len(times) // 2], times[min(len(times) - 1, int(0.95 * len(times)))]


def parse_verdict(raw: str) -> tuple[bool, tuple[str, ...]] | None:
    """(safe, codes) of an answer like "safe" or "unsafe\\nS1,S3"; None if it is anything else."""
    m = _VERDICT.fullmatch(raw)
    if m is None:
        return None
    if m.group(1) == "safe":
        return True, ()
    return False, tuple(dict.fromkeys(m.group(2).split(",")))


def is_llama_guard(metadata: dict[str, str]) -> bool:
    """Whether a GGUF's metadata is Llama Guard's (its name, or its chat template's policy block)."""
    names = " ".join(metadata.get(k, "") for k in ("general.name", "general.basename", "general.finetune"))
    return bool(re.search(r"llama[\s_-]*guard", names, re.IGNORECASE)) or \
        "UNSAFE CONTENT CATEGORIES" in metadata.get("tokenizer.chat_template", "")


def llama_guard_prompt(text: str, stage: Stage, categories: Iterable[str], question: str = "") -> str:
    """Llama Guard 3's prompt: is the last User message (input) or Agent message (output) unsafe?"""
    role = "Agent" if stage == "output" else "User"
    listed = "\n".join(f"{c}: {LLAMA_GUARD_3[c]}." for c in categories)
    turns = f"User: {question}\n\nAgent: {text}" if stage == "output" else f"User: {text}"
    return ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
            f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
            "policy with the below categories.\n\n"
            f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{listed}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
            f"<BEGIN CONVERSATION>\n\n{turns}\n\n<END CONVERSATION>\n\n"
            f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
            " - First line must read 'safe' or 'unsafe'.\n"
            " - If unsafe, a second line must include a comma-separated list of violated categories."
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def judge_messages(text: str, stage: Stage, categories: Iterable[str], question: str = "") -> list[dict[str, str]]:
    """The short prompt for an instruct model asked as a judge (its own chat template is applied)."""
    listed = "; ".join(f"{c} {LLAMA_GUARD_3[c]}" for c in categories)
    what = "the assistant's answer" if stage == "output" else "the user's message"
    system = (f"You are a content safety classifier. Decide whether {what} below requests, gives or encourages "
              f"harmful content in these categories: {listed}. Asking about a topic, history, fiction, prevention "
              "or safety is safe. Reply with one word, safe or unsafe; if unsafe, add a new line with the codes "
              "of the violated categories, separated by commas.")
    if stage == "output":
        body = f"User's message:\n<<<\n{question}\n>>>\n\nAssistant's answer to check:\n<<<\n{text}\n>>>"
    else:
        body = f"User's message to check:\n<<<\n{text}\n>>>"
    return [{"role": "system", "content": system}, {"role": "user", "content": body}]


class Guard:
    """One guard GGUF in its own llama.cpp instance; `check` is thread-safe (it holds the lock)."""

    def __init__(self, path: Path, n_gpu_layers: int = -1, n_threads: int = 0, grammar: str = VERDICT_GRAMMAR):
        """Raises GuardError naming safety.guard_model. `grammar` narrows what the model may answer."""
        import llama_cpp

        from bot.model_files import ModelFileError, check_model_file

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise GuardError(f"safety.guard_model {str(self.path)!r} does not exist; set it to a GGUF file "
                             f"(e.g. Llama-Guard-3-1B-Q4_K_M.gguf) or leave it empty to turn layer 3 off")
        try:
            check_model_file(self.path, n_gpu_layers)
            self.llama = llama_cpp.Llama(str(self.path), n_ctx=N_CTX, n_gpu_layers=n_gpu_layers,
                                         n_threads=n_threads or os.cpu_count(), verbose=False)
        except (ModelFileError, ValueError) as e:
            raise GuardError(f"safety.guard_model: {e}") from None
        meta = self.llama.metadata
        self.llama_guard = is_llama_guard(meta)
        if not self.llama_guard and not meta.get("tokenizer.chat_template"):
            raise GuardError(f"safety.guard_model {self.path.name} is neither Llama Guard nor an instruct model with a "
                             f"chat template (tokenizer.chat_template) to ask as a judge")
        self.grammar = llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
        self._lock = threading.Lock()
        self.timings: collections.deque[float] = collections.deque(maxlen=500)  # ms of the latest calls
        log.info("guard model %s loaded as %s", self.path.name, "Llama Guard" if self.llama_guard else "a judge")

    def describe(self) -> str:
        return f"{self.path.name} ({'Llama Guard' if self.llama_guard else 'instruct model as judge'})"

    def check(self, text: str, stage: Stage, categories: Iterable[str], question: str = "") -> GuardVerdict:
        """The model's verdict on a question (stage input) or an answer to `question` (stage output),
        for the hazard `categories` (codes S1..S14). Never raises for a bad answer: see `unparsed`."""
        categories = [c for c in categories if c in LLAMA_GUARD_3]
        started = time.perf_counter()
        with self._lock:
            try:
                raw, finish = self._ask(self._cut(text, 1500), stage, categories, self._cut(question, 600))
            except Exception as e:  # llama.cpp failing on one message must not take the bot down
                log.warning("guard model failed on a %s: %s", stage, e)
                raw, finish = "", "error"
        parsed = parse_verdict(raw) if finish == "stop" else None
        ms = (time.perf_counter() - started) * 1000
        self.timings.append(ms)
        if parsed is None:
            log.warning("guard model answer not understood (%s, %r): counted as unsafe", finish, raw[:80])
            return GuardVerdict(False, ("unparsed",), raw, ms)
        log.debug("guard %s: %r in %.0f ms", stage, raw, ms)
        return GuardVerdict(parsed[0], parsed[1], raw, ms)

    def _ask(self, text: str, stage: Stage, categories: list[str], question: str) -> tuple[str, str]:
        common = dict(max_tokens=MAX_TOKENS, temperature=0.0, top_k=1, grammar=self.grammar)
        if self.llama_guard:
            tokens = self.llama.tokenize(llama_guard_prompt(text, stage, categories, question).encode("utf-8"),
                                         add_bos=False, special=True)
            out = self.llama.create_completion(tokens, **common)
            choice = out["choices"][0]
            return choice["text"], choice["finish_reason"]
        out = self.llama.create_chat_completion(judge_messages(text, stage, categories, question), **common)
        choice = out["choices"][0]
        return choice["message"]["content"] or "", choice["finish_reason"]

    def _cut(self, text: str, max_tokens: int) -> str:
        """`text` within `max_tokens` tokens: its beginning and its end (called under the lock)."""
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) <= max_tokens:
            return text
        half = max_tokens // 2
        head = self.llama.detokenize(tokens[:half]).decode("utf-8", "ignore")
        tail = self.llama.detokenize(tokens[-half:]).decode("utf-8", "ignore")
        return f"{head} [...] {tail}"

    def latency(self) -> tuple[int, float, float]:
        return latency(self.timings)

    def close(self) -> None:
        with self._lock:
            self.llama.close()
