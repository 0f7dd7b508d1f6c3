"""Questions embedded from CUDA graphs (knowledge.question_graphs): on a GPU they give the model's own
vectors; where a graph cannot be captured, the model's own encode answers instead."""

import logging

import pytest
import torch

from knowledge.embeddings import Embedder
from knowledge.question_graphs import MAX_BATCH, QuestionGraphs

QUESTIONS = ["hi", "What was Apple's total net sales in the third quarter of 2022?",
             "How much did Intel spend on research and development, " * 6 + "and why?", "revenue " * 400]


def test_a_model_that_cannot_be_captured_is_left_to_its_own_encode(embedder, caplog):
    graphs = QuestionGraphs(embedder.model)  # on the CPU: there is no CUDA graph to capture
    with caplog.at_level(logging.WARNING, logger="knowledge.question_graphs"):
        graphs.capture()
        assert graphs.encode(QUESTIONS[:1]) is None
        assert graphs.encode(QUESTIONS[1:2]) is None  # not tried again
    assert len(caplog.records) == 1 and "model's own encode" in caplog.records[0].getMessage()
    assert embedder.encode_question(QUESTIONS[1]).shape == (embedder.dimension,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_questions_from_graphs_match_the_models_own_encode():
    gpu = Embedder(device="cuda")
    graphs = QuestionGraphs(gpu.model)
    graphs.capture()
    for batch in (QUESTIONS[:1], QUESTIONS[1:2], QUESTIONS, QUESTIONS * 4, QUESTIONS[:1]):
        ours, theirs = graphs.encode(batch), gpu.encode(batch)
        assert ours is not None and ours.shape == theirs.shape
        assert (ours * theirs).sum(axis=1).min() > 0.999  # float16 either way; padding changes the rounding
    assert graphs.encode(QUESTIONS * MAX_BATCH) is None  # more than one graph's batch: the model's encode
