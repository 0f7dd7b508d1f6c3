"""Real PDF files written by the tests themselves: text pages, scans, encrypted and broken files."""

from __future__ import annotations

import io
import zlib

import pypdf


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[str], *, drawing_only: bool = False) -> bytes:
    """A valid PDF with one page per string (lines split on newlines), in Helvetica.

    drawing_only=True gives pages with a filled rectangle and no text, like a scan.
    """
    objects: list[bytes] = []
    page_ids = []
    font_id = 3
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"")  # pages tree, filled in below
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for text in pages:
        if drawing_only:
            stream = b"0.5 g 50 50 500 700 re f"
        else:
            lines = " T* ".join(f"({_escape(line)}) Tj" for line in text.split("\n"))
            stream = f"BT /F1 10 Tf 40 800 Td 12 TL {lines} ET".encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_id = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (content_id, font_id)
        )
        page_ids.append(len(objects))
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def inflating_pdf(inflated_bytes: int) -> bytes:
    """A one-page PDF whose compressed page content inflates to that many bytes (a text line, then
    spaces): small on disk, huge in a reader's memory."""
    pdf = make_pdf(["placeholder"])
    packer = zlib.compressobj(1)
    parts = [packer.compress(b"BT /F1 10 Tf 40 800 Td (Text behind a wall of spaces) Tj ET\n")]
    block = b" " * (1 << 20)
    parts += [packer.compress(block) for _ in range(inflated_bytes >> 20)]
    stream = b"".join(parts) + packer.flush()
    start = pdf.index(b"<< /Length")  # the first page's content stream; the xref offsets go stale
    end = pdf.index(b"endstream", start) + len(b"endstream")
    return (pdf[:start] + b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream
            + b"\nendstream" + pdf[end:])


def encrypt(pdf: bytes, user_password: str) -> bytes:
    """AES-256 encryption; an empty user password opens without asking (owner password set)."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
