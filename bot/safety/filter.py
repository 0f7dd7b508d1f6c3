"""The safety filter the pipeline calls, and the service API behind the Discord /safety command.

Layers, cheapest first, each switchable per server; levels off / standard / strict:
  1 rules       the server's blocked terms and patterns; jailbreak wrappers (category "jailbreak")
  2 classifier  the intent classifier (bot.safety.classifier); refuses when P(harm) restricted to the
                server's enabled categories reaches the level's threshold (questions only, not answers)
  3 guard       only when safety.guard_model is set: a guard model (bot.safety.guard, Llama Guard 3 or an
                instruct model as judge) asked about questions and answers, for the server's enabled
                categories; runs last, when the cheaper layers let the text through
Passages retrieved from the server's PDFs are screened too: instruction-like sentences are cut out.
Every refusal is logged (category, layer, user, channel; the text only if the server asks) and passed
to `on_refusal`, which the Discord layer sets to post it in the server's log channel.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from bot.config import Config, ConfigError, SafetyConfig
from bot.pipeline import Verdict, Where
from bot.safety import rules
from bot.safety.classifier import Classifier
from bot.safety.guard import Guard, GuardError
from bot.safety.settings import LAYERS, LEVELS, GuildSettings, Refusal, SettingsStore
from bot.safety.taxonomy import CATEGORIES, HAZARDS, check_category

if TYPE_CHECKING:
    from bot.model_process import ProcessGuard

log = logging.getLogger(__name__)
P = TypeVar("P")
_NOWHERE = Where("", "", "")


@dataclass(frozen=True)
class Decision:
    refuse: bool
    layer: str = ""  # rules, classifier, guard ("" when answered)
    category: str = ""
    score: float = 0.0  # the classifier's P(harm) over enabled categories, when it ran
    guard_ms: float = 0.0  # the guard model's time, when it ran


class SafetyFilter:
    def __init__(self, config: SafetyConfig, store: SettingsStore, classifier: Classifier | None = None,
                 guard: Guard | ProcessGuard | None = None):
        self.config = config
        self.store = store
        self.classifier = classifier or Classifier()
        self.guard = guard  # layer 3, None unless safety.guard_model is set
        # Called (from a worker thread) with each Refusal; the Discord layer posts it to refusal.log_channel.
        self.on_refusal: Callable[[Refusal], None] | None = None

    @classmethod
    def open(cls, config: Config) -> SafetyFilter:
        s = config.safety
        guard = open_guard(config)
        safety = cls(s, SettingsStore(config.data_dir / "safety.sqlite3", GuildSettings(level=s.level, log_text=s.log_text)),
                     guard=guard)
        safety.classifier.load()
        return safety

    # --- checks -------------------------------------------------------------------------------
    def judge(self, text: str, guild: str = "", output: bool = False, question: str = "") -> Decision:
        """The verdict on a question, or (output) on an answer to `question`, under the server's settings."""
        settings = self.store.get(guild)
        if settings.level == "off":
            return Decision(False)
        strict = settings.level == "strict"
        enabled = set(CATEGORIES) - set(settings.disabled_categories)
        if settings.rules:
            blocked = rules.blocked_matcher(settings.blocked_terms, settings.blocked_patterns)
            if blocked is not None and blocked.search(text):
                return Decision(True, "rules", "blocked")
            if not output and "jailbreak" in enabled and rules.jailbreak(text, strict):
                return Decision(True, "rules", "jailbreak")
        # The classifier reads requests; on answers it cannot tell a 10-Q summary (P(harm) p95 0.66, max 0.95)
        # from harmful instructions (0.66-0.71), so answers get layer 1 only.
        on = [c for c in HAZARDS if c in enabled]
        harm = 0.0
        if settings.classifier and not output and on:
            score = self.classifier.score(text)
            harm = score.harm * sum(score.categories[c] for c in on)
            threshold = self.config.threshold_strict if strict else self.config.threshold_standard
            if harm >= threshold:
                return Decision(True, "classifier", max(on, key=score.categories.get), harm)
        if settings.guard and self.guard is not None and on:
            verdict = self.guard.check(text, "output" if output else "input", on, question)
            # Codes of categories this server turned off do not count; "unparsed" fails safe unless turned off.
            named = [c for c in verdict.categories if c in enabled]
            if not verdict.safe and named:
                return Decision(True, "guard", named[0], harm, verdict.ms)
            return Decision(False, score=harm, guard_ms=verdict.ms)
        return Decision(False, score=harm)

    def check_input(self, text: str, where: Where = _NOWHERE) -> Verdict:
        return self._verdict(text, where, "input")

    def check_output(self, text: str, where: Where = _NOWHERE, question: str = "") -> Verdict:
        """The check of an answer (so far) to `question`."""
        return self._verdict(text, where, "output", question)

    def _verdict(self, text: str, where: Where, stage: str, question: str = "") -> Verdict:
        decision = self.judge(text, where.guild, output=stage == "output", question=question)
        if not decision.refuse:
            return Verdict(True)
        settings = self.store.get(where.guild)
        refusal = Refusal(time.time(), where.guild, where.channel, where.user, stage, decision.layer, decision.category,
                          text if settings.log_text else None, settings.log_channel)
        log.info("refused %s in guild %s channel %s from user %s: layer %s, category %s", stage, where.guild,
                 where.channel, where.user, decision.layer, decision.category)
        self.store.log(refusal)
        if self.on_refusal is not None:
            try:
                self.on_refusal(refusal)
            except Exception:
                log.exception("on_refusal callback failed")
        return Verdict(False, settings.refusal or self.config.refusal)

    def screen_passages(self, passages: Sequence[P]) -> list[P]:
        """The passages with instruction-like sentences cut out (they are data, not orders)."""
        if not self.config.screen_passages:
            return list(passages)
        screened = []
        for p in passages:
            text, removed = rules.neutralise_instructions(p.text)
            if removed:
                log.info("cut %d instruction-like sentence(s) from %s p.%s", removed, p.file, p.page)
                p = dataclasses.replace(p, text=text)
            screened.append(p)
        return screened

    # --- service API for /safety (each raises ValueError with a one-line reason) ---------------
    def settings(self, guild: str) -> GuildSettings:
        return self.store.get(str(guild))

    def _update(self, guild: str, **changes) -> GuildSettings:
        settings = dataclasses.replace(self.store.get(str(guild)), **changes)
        self.store.put(str(guild), settings)
        return settings

    def set_level(self, guild: str, level: str) -> GuildSettings:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose one of: {', '.join(LEVELS)}")
        return self._update(guild, level=level)

    def set_layer(self, guild: str, layer: str, on: bool) -> GuildSettings:
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose one of: {', '.join(LAYERS)}")
        if layer == "guard" and self.guard is None:
            raise ValueError("this bot has no guard model: its owner can set safety.guard_model in the config "
                             "to a GGUF file (e.g. Llama Guard 3 1B)")
        return self._update(guild, **{layer: on})

    def set_category(self, guild: str, category: str, on: bool) -> GuildSettings:
        category = check_category(category)
        off = set(self.settings(guild).disabled_categories)
        off = off - {category} if on else off | {category}
        return self._update(guild, disabled_categories=tuple(sorted(off, key=list(CATEGORIES).index)))

    def block(self, guild: str, term: str = "", pattern: str = "") -> GuildSettings:
        """Block a whole-word term (any case) or a regular expression."""
        s = self.settings(guild)
        if pattern:
            rules.check_pattern(pattern)
            return self._update(guild, blocked_patterns=tuple(dict.fromkeys(s.blocked_patterns + (pattern,))))
        term = " ".join(term.split())
        if not 0 < len(term) <= 100:
            raise ValueError("a blocked term must be 1 to 100 characters")
        return self._update(guild, blocked_terms=tuple(dict.fromkeys(s.blocked_terms + (term,))))

    def unblock(self, guild: str, term_or_pattern: str) -> bool:
        s = self.settings(guild)
        terms = tuple(t for t in s.blocked_terms if t.lower() != term_or_pattern.strip().lower())
        patterns = tuple(p for p in s.blocked_patterns if p != term_or_pattern)
        if (terms, patterns) == (s.blocked_terms, s.blocked_patterns):
            return False
        self._update(guild, blocked_terms=terms, blocked_patterns=patterns)
        return True

    def set_refusal(self, guild: str, text: str) -> GuildSettings:
        """The reply to refused messages; empty restores the default."""
        text = text.strip()
        if len(text) > 500:
            raise ValueError(f"the refusal text is too long ({len(text)} characters; at most 500)")
        return self._update(guild, refusal=text)

    def set_log_channel(self, guild: str, channel: str) -> GuildSettings:
        """Where refusals are posted; empty stops posting."""
        return self._update(guild, log_channel=str(channel))

    def set_log_text(self, guild: str, on: bool) -> GuildSettings:
        return self._update(guild, log_text=on)

    def refusals(self, guild: str, limit: int = 20) -> list[Refusal]:
        return self.store.refusals(str(guild), limit)

    def close(self) -> None:
        self.store.close()
        if self.guard is not None:
            self.guard.close()


def open_guard(config: Config) -> ProcessGuard | None:
    """The guard model of safety.guard_model, or None when it is empty; ConfigError naming the key."""
    if not config.safety.guard_model:
        return None
    try:
        from bot.model_process import ProcessGuard  # imports this package: not at the top

        # In a child process, as the chat model: llama.cpp's CUDA libraries crash beside torch's.
        return ProcessGuard(Path(config.safety.guard_model), config.safety.guard_n_gpu_layers, config.model.n_threads)
    except GuardError as e:
        raise ConfigError(str(e)) from None
