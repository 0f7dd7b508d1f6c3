"""The safety filter: per-server rules, an embedded intent classifier, passage screening, refusal log."""

from bot.safety.filter import Decision, SafetyFilter
from bot.safety.settings import GuildSettings, Refusal

__all__ = ["Decision", "GuildSettings", "Refusal", "SafetyFilter"]
