"""The server backend on llama.cpp's own llama-server, built with patches/ applied by
tests/build_llama_server.sh (CI runs it first; without it these tests are skipped)."""

import os
import sys
from pathlib import Path

import pytest

from bot.config import load_config
from bot.llm import ServerModel
from tests.conftest import ENGINE_ENV, smollm2_path
from tests.test_llm import MESSAGES, _ban_end_of_turn, _generate_greedily

ROOT = Path(__file__).resolve().parents[1]
LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER") or ROOT / "build/llama-server/bin/llama-server")
pytestmark = pytest.mark.skipif(not LLAMA_SERVER.exists(),
                                reason=f"no llama-server at {LLAMA_SERVER}: bash tests/build_llama_server.sh builds it")


@pytest.fixture(scope="module")
def server():
    env = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_MODEL_BACKEND": "server",
           "BOT_MODEL_SERVER_BINARY": str(LLAMA_SERVER), "BOT_MODEL_PARALLEL": "2"}
    model = ServerModel(load_config(None, env=env).model)
    yield model
    model.close()


def _greedy_from_scratch(llm, messages, max_tokens: int) -> str:
    """The reference answer with the whole prompt evaluated anew, as a fresh llama-server slot does: a
    prefix reused from an earlier conversation in the KV cache can tip a near tie the other way."""
    llm.llama.reset()
    return _generate_greedily(llm, messages, max_tokens)


def test_llama_server_answers_as_the_local_backend(server, llm):
    """The bot renders the template and llama-server gets the same tokens as LocalModel: the same
    greedy answer, the same prompt length, and the next turn reuses the slot's KV cache."""
    answer = "".join(server.stream(MESSAGES, 16))
    assert answer == _greedy_from_scratch(llm, MESSAGES, 16)
    # It gets them as token ids, tokenized piece by piece between the markers (see PromptTokenizer).
    assert server._tokenize(server._template.render(MESSAGES)) == llm.tokenize_prompt(MESSAGES)
    prompt = len(llm.tokenize_prompt(MESSAGES))
    assert server.last_timings["prompt_n"] + server.last_timings["cache_n"] == prompt
    follow_up = MESSAGES + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    list(server.stream(follow_up, 4))
    assert server.last_timings["cache_n"] >= prompt
    assert server.last_timings["prompt_n"] + server.last_timings["cache_n"] == len(llm.tokenize_prompt(follow_up))
    text = "The quarterly report lists revenue by region."
    assert server.count(text) == llm.count(text)


def test_llama_server_bans_tokens_and_survives_a_crash(server, llm):
    list(server.stream(MESSAGES, 12, logit_bias=_ban_end_of_turn(llm)))
    assert server.last_timings["predicted_n"] == 12  # end of turn banned: the answer runs to max_tokens
    process = server._process
    process.kill()
    process.wait()
    assert "".join(server.stream(MESSAGES, 8)) == _greedy_from_scratch(llm, MESSAGES, 8)  # started again
    assert server.restarts == 1


def test_graph_top_k_switch_changes_no_answer():
    """patches/llama-server-graph-top-k.patch: the same 16 answers without and with the switch the bot
    sets on a GPU (greedy, sampled with seeds, a ban, and requests it must leave to the CPU)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import check_server_patch

    without, with_switch = check_server_patch.without_and_with(str(LLAMA_SERVER), str(smollm2_path()), ["-t", "1"])
    assert len(without) == 16 and all(without.values())
    assert with_switch == without


def test_throwaway_prompts_at_start_change_no_answer():
    """With the whole model on a GPU, ServerModel has llama-server prefill a throwaway prompt of each
    size class as it starts, as LocalModel does (load_prefill_kernels); answers after it are as before.
    A context of 512 tokens caps the sizes (2-7, every 8 to 128, every 64 to 448) and what the CPU prefills."""
    env = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_MODEL_BACKEND": "server",
           "BOT_MODEL_SERVER_BINARY": str(LLAMA_SERVER), "BOT_MODEL_N_CTX": "512", "BOT_MODEL_N_THREADS": "2"}
    server = ServerModel(load_config(None, env=env).model)
    try:
        before = "".join(server.stream(MESSAGES, 16))
        server.load_prefill_kernels()
        assert "".join(server.stream(MESSAGES, 16)) == before
    finally:
        server.close()
