"""A fake Discord API (REST + gateway + CDN) on 127.0.0.1 for end-to-end tests of the real discord.py client.

See README.md in this directory.
"""

from .payloads import ADMINISTRATOR, MANAGE_GUILD, Attachment, Channel, Guild, Role, User
from .records import BotMessage, HttpFault, InteractionRecord, RecordedRequest, SentFile
from .server import FakeDiscord
from .spec import SpecViolation

__all__ = [
    "ADMINISTRATOR", "MANAGE_GUILD", "Attachment", "BotMessage", "Channel", "FakeDiscord", "Guild", "HttpFault",
    "InteractionRecord", "RecordedRequest", "Role", "SentFile", "SpecViolation", "User",
]
