"""PDF bytes -> text per page, with a clear reason whenever a file cannot be read."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Callable

import pypdf
from pypdf.errors import FileNotDecryptedError, LimitReachedError, PdfReadError, PyPdfError

# pypdf refuses arrays over 100,000 elements. Real filings (e.g. some SEC 10-Qs) carry larger ones,
# so this limit is raised tenfold; every other pypdf resource limit stays in force, and the file
# size limit (checked before parsing) bounds memory.
_ARRAY_LIMIT = 1_000_000
_MIN_TEXT_CHARS = 20  # a document with less text than this in total is treated as scanned


class PdfError(ValueError):
    """The file cannot be ingested; str(error) is a short reason fit to show to the user."""


@dataclass(frozen=True)
class Page:
    number: int  # 1-based, as readers see it
    text: str


def check_pdf_bytes(data: bytes, max_bytes: int) -> None:
    """Cheap checks that need no parsing: empty, too large, not a PDF at all."""
    if not data:
        raise PdfError("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise PdfError(too_large_reason(len(data), max_bytes))
    # The PDF header may follow a little junk; readers accept it within the first 1 KiB.
    if b"%PDF-" not in data[:1024]:
        raise PdfError("not a PDF (no %PDF header)")


def too_large_reason(size: int, max_bytes: int) -> str:
    return f"the file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit"


def extract_pages(data: bytes, max_bytes: int, max_pages: int,
                  claim: Callable[[int], int | None] | None = None) -> list[Page]:
    """Return the non-empty pages of a PDF, or raise PdfError with a reason a user can act on.

    claim lets several processes extract one file at once (knowledge.ingest_worker): called with the
    page count, it returns the index of the next page this process takes, or None once every page is
    taken. Only those pages are returned, and join_shares puts the processes' pages back together.
    """
    check_pdf_bytes(data, max_bytes)
    with pypdf.apply_configuration(array_maximum_element_count=_ARRAY_LIMIT):
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not _open_with_empty_password(reader):
                raise PdfError("the PDF is password-protected; upload a copy without a password")
            count = len(reader.pages)
            if count == 0:
                raise PdfError("the PDF has no pages")
            if count > max_pages:
                raise PdfError(f"the PDF has {count} pages, over the {max_pages}-page limit")
            indexes = range(count) if claim is None else iter(lambda: claim(count), None)
            pages = [Page(i + 1, clean_text(reader.pages[i].extract_text() or "")) for i in indexes]
        except PdfError:
            raise
        except FileNotDecryptedError:
            raise PdfError("the PDF is password-protected; upload a copy without a password") from None
        except LimitReachedError as e:
            raise PdfError(f"the PDF is too complex to read safely ({e})") from None
        except (PyPdfError, PdfReadError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
            # pypdf raises many types on damaged files; all mean the same to a user.
            raise PdfError(f"the PDF is damaged or truncated ({type(e).__name__})") from None
    pages = [p for p in pages if p.text]
    return pages if claim is not None else join_shares([pages])


def join_shares(shares: list[list[Page]]) -> list[Page]:
    """The pages of a file extracted in shares, in order; raises PdfError if the file has no text."""
    pages = sorted((page for share in shares for page in share), key=lambda page: page.number)
    if sum(len(p.text) for p in pages) < _MIN_TEXT_CHARS:
        raise PdfError("no extractable text (a scanned PDF? run OCR on it first)")
    return pages


def _open_with_empty_password(reader: pypdf.PdfReader) -> bool:
    """Many PDFs are AES-encrypted with an empty user password only to restrict printing/editing."""
    try:
        return bool(reader.decrypt(""))
    except (FileNotDecryptedError, NotImplementedError, PdfReadError):
        return False


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise whitespace, keep line breaks (they separate table rows), drop NULs."""
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
