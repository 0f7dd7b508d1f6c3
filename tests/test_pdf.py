import itertools

import pytest

from knowledge.pdf import PdfError, extract_pages, join_shares
from tests.pdfs import encrypt, make_pdf

MB = 1_000_000


def read(data, max_bytes=MB, max_pages=100):
    return extract_pages(data, max_bytes, max_pages)


def test_text_per_page_with_page_numbers():
    pages = read(make_pdf(["Revenue grew 12%\nto $4.2 billion", "", "Risk factors (currency)"]))
    assert [p.number for p in pages] == [1, 3]  # the empty page is dropped, numbers stay true
    assert pages[0].text == "Revenue grew 12%\nto $4.2 billion"
    assert "Risk factors (currency)" in pages[1].text


def test_a_word_hyphenated_at_a_line_end_keeps_its_hyphen():
    pages = read(make_pdf(["Our credit-\nfinancing arrangements and stock-\nbased compensation"]))
    assert pages[0].text == "Our credit-financing arrangements and stock-based compensation"


def test_dot_leaders_are_shortened_and_ellipses_kept():
    pages = read(make_pdf(["Contents\nIntroduction . . . . . . . . . . 1\nRisk factors.............. 12\nWait... see 1.2.3.4.5"]))
    assert pages[0].text == "Contents\nIntroduction ... 1\nRisk factors ... 12\nWait... see 1.2.3.4.5"


def test_aes_pdf_with_empty_password_opens():
    pages = read(encrypt(make_pdf(["Quarterly report text"]), user_password=""))
    assert pages[0].text == "Quarterly report text"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"Just some text, saved as a .pdf", "not a PDF"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not a PDF"),
        (make_pdf(["a page of text"])[:200], "damaged or truncated"),
        (b"%PDF-1.7\n" + bytes(range(256)) * 20, "damaged or truncated"),
        (encrypt(make_pdf(["secret"]), user_password="pw"), "password-protected"),
        (make_pdf(["", ""], drawing_only=True), "no extractable text"),
    ],
    ids=["empty", "text", "png", "truncated", "garbage", "password", "scanned"],
)
def test_bad_files_give_a_reason(data, reason):
    with pytest.raises(PdfError, match=reason):
        read(data)


def test_size_and_page_limits():
    pdf = make_pdf(["one", "two", "three"])
    with pytest.raises(PdfError, match="over the 0.0001 MB limit"):
        read(pdf, max_bytes=100)
    with pytest.raises(PdfError, match="3 pages, over the 2-page limit"):
        read(pdf, max_pages=2)


def test_array_over_pypdf_default_limit_is_read():
    # An array of 150,000 numbers in the page dictionary: pypdf's default limit (100,000) refuses it.
    pdf = make_pdf(["Readable text despite a huge array"])
    big = b"/Junk [" + b"0 " * 150_000 + b"] "
    pdf = pdf.replace(b"/Type /Page /Parent", big + b"/Type /Page /Parent", 1)
    # Offsets in the xref table are now stale; PDFium rebuilds them, as it does for many real files.
    assert read(pdf, max_bytes=10 * MB)[0].text == "Readable text despite a huge array"


def every_third(first: int):
    """A claim function as three workers taking turns would have: pages first, first + 3, ..."""
    pages = itertools.count(first, 3)
    return lambda count: page if (page := next(pages)) < count else None


def test_a_file_extracted_in_shares_joins_to_the_whole():
    data = make_pdf([f"Page {n} of the annual report" if n != 4 else "" for n in range(1, 8)])
    whole = read(data)
    shares = [extract_pages(data, MB, 100, every_third(first)) for first in range(3)]
    assert [p.number for p in shares[0]] == [1, 7]  # pages 1, 4 (empty), 7
    assert join_shares(shares) == whole
    with pytest.raises(PdfError, match="no extractable text"):
        scanned = make_pdf(["", "", ""], drawing_only=True)
        join_shares([extract_pages(scanned, MB, 100, every_third(first)) for first in range(3)])
