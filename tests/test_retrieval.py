from knowledge.retrieval import DocumentRouter, document_period, naming_terms, words
from tests.pdfs import make_pdf


def test_quarter_words_match_quarter_codes():
    assert "q1" in words("What happened in the first quarter of 2023?")
    assert "q3" in words("third fiscal quarter")


def test_naming_terms_are_file_words_and_proper_nouns():
    terms = naming_terms("2023 Q3 ACME", "ACME Corporation quarterly report. Revenue grew in Ohio.")
    assert {"2023", "q3", "acme", "corporation", "ohio"} <= terms
    assert "revenue" in terms and "grew" not in terms  # sentence-initial capital counts; lower-case words don't
    cover = naming_terms("report", "ACME Corp. (Zip Code) Telephone number, including area code: 555-0100")
    assert "code" not in cover and {"acme", "zip", "telephone"} <= cover  # written in lower case too: not a name


def test_document_period():
    assert document_period("2023 Q3 ACME", "") == 2023 * 12 + 9
    assert document_period("Q1-2021 report", "") == 2021 * 12 + 3
    assert document_period("report", "for the period ended July 1, 2023 (filed August 4, 2023)") == 2023 * 12 + 8
    assert document_period("report", "no dates here") is None


def held_by_the_named_only(terms):
    """documents_holding for a router whose documents' text holds exactly their naming terms."""
    return lambda term, at_most: min(sum(term in t for t in terms.values()), at_most)


def test_router_prefers_named_and_newest_documents():
    terms = {"a22": {"acme", "2022"}, "a23": {"acme", "2023"}, "b23": {"globex", "2023"}, "c21": {"initech", "2021"}}
    router = DocumentRouter(terms, {"a22": 2022 * 12, "a23": 2023 * 12, "b23": 2023 * 12 + 6, "c21": 2021 * 12},
                            held_by_the_named_only(terms))
    scores = router.scores("How did Acme's revenue change?")
    assert scores["a22"] == scores["a23"] == 1.0 and scores["b23"] == scores["c21"] == 0.0
    latest = router.scores("What does Acme's latest report say?")
    assert latest["a23"] > latest["a22"] > latest["b23"]  # newest of the documents the question names
    assert router.scores("What was in the most recent quarterly filing?")["b23"] > 0  # names none: the newest of all
    assert router.scores("What happened in 2023?")["a23"] == 1.0  # 2023 rules out half of the documents
    for not_asking_for_the_newest in ("When was Acme's guide last updated?", "What are Acme's current liabilities?"):
        assert router.scores(not_asking_for_the_newest) == scores
    assert router.scores("What is the weather like?") == {}


def test_a_word_every_document_uses_names_the_one_whose_cover_capitalises_it_only_weakly():
    terms = {"a": {"acme", "number"}, "b": {"globex"}, "c": {"initech"}, "d": {"umbrella"}}
    router = DocumentRouter(terms, dict.fromkeys(terms), lambda term, at_most: min(4 if term == "number" else 1, at_most))
    assert router.scores("What is Acme's revenue?")["a"] == 1.0
    assert 0 < router.scores("How do I read an error number?")["a"] < 0.6


def test_look_alike_documents_are_told_apart_by_name(kb):
    for company in ("Acme", "Globex", "Initech"):
        kb.ingest("9", f"2023 Q1 {company[:3].upper()}.pdf", make_pdf([
            f"{company} Inc. quarterly report for the period ended March 31, 2023",
            "Net revenue increased 8% compared to the prior year, driven by services.\nOperating margin was 21%.",
        ]))
    for company in ("Acme", "Globex", "Initech"):
        top = kb.search("9", f"How did {company}'s net revenue change?", k=2)
        assert {p.file for p in top} == {f"2023 Q1 {company[:3].upper()}.pdf"}
