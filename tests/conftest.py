pytest_plugins = ["tests.fake_discord.fixtures"]  # fake_discord, run_bot

import pytest

from bot.config import load_config
from knowledge.embeddings import Embedder


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2, from the copy shipped on PyPI; loaded once for the whole run."""
    return Embedder(device="cpu")


@pytest.fixture
def config(tmp_path):
    return load_config(None, env={}, data_dir=tmp_path / "data")


@pytest.fixture
def kb(config, embedder):
    from knowledge.base import KnowledgeBase

    return KnowledgeBase(config, embedder)
