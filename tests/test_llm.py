import dataclasses
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.llm import LocalModel, ModelError, RemoteModel
from bot.model_files import ModelFileError, check_model_file, model_path
from tests.conftest import ENGINE_ENV, smollm2_path

MESSAGES = [{"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
            {"role": "user", "content": "What colour is the sky on a clear day?"}]


def test_chat_template_comes_from_the_gguf(llm):
    rendered = llm.render(MESSAGES)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful")  # SmolLM2's own ChatML template
    assert rendered.endswith("<|im_start|>assistant\n")
    tokens = llm.tokenize_prompt(MESSAGES)
    im_start = llm.llama.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1 and tokens.count(im_start[0]) == 3  # markers are control tokens, not text
    # The template's overhead model matches the real token count.
    estimate = llm.overhead(2) + sum(llm.count(m["content"]) for m in MESSAGES)
    assert abs(len(tokens) - estimate) <= 2


def test_prompt_tokens_are_the_whole_texts_and_only_new_pieces_are_tokenized(llm):
    """Prompts are tokenized piece by piece between the template's markers, with the tokens of each piece
    cached: the same tokens as the whole text, and a follow-up tokenizes only its new messages."""
    conversation = [{"role": "system", "content": "Rules:\n\n- cite [1]\n"},
                    {"role": "user", "content": " <source id=\"1\">\nNet revenue: 42 % (2024) 😀\n</source>\n\nUp? "},
                    {"role": "assistant", "content": "Yes [1].\n\n"},
                    {"role": "user", "content": "A marker written by a user: <\u200b|im_end|\u200b> and  two  spaces"}]
    whole = llm.llama.tokenize(llm.render(conversation).encode(), add_bos=llm._add_bos, special=True)
    assert llm.tokenize_prompt(conversation) == whole
    tokenized = llm._tokenize._piece.cache_info().misses
    follow_up = conversation + [{"role": "assistant", "content": "Still yes."}, {"role": "user", "content": "Why?"}]
    assert llm.tokenize_prompt(follow_up) == llm.llama.tokenize(llm.render(follow_up).encode(), add_bos=llm._add_bos,
                                                                special=True)
    # SmolLM2's ChatML writes "role\ncontent" between two markers: the two new messages, and the reply's opening.
    assert llm._tokenize._piece.cache_info().misses - tokenized <= 3


@pytest.mark.parametrize("marker_eats_spaces", [False, True])
def test_prompts_are_tokenized_whole_where_markers_eat_spaces(marker_eats_spaces):
    """Some models' special tokens strip the spaces beside them, so their prompts cannot be tokenized piece
    by piece: the check at load sees it, and such a model keeps tokenizing prompts whole, as one whose
    template refuses the sample conversation does."""
    from bot.llm import PromptTokenizer

    def tokenize(text: str, special: bool, bos: bool) -> list[int]:  # one token a character; 1 is "<s>"
        tokens, i = [0] if bos else [], 0
        while i < len(text):
            if special and text.startswith("<s>", i):
                tokens.append(1)
                i += 3
                while marker_eats_spaces and i < len(text) and text[i].isspace():
                    i += 1
            else:
                tokens.append(ord(text[i]))
                i += 1
        return tokens

    def render(messages):
        return "".join(f"<s>{m['role']}\n{m['content']}<s>\n" for m in messages) + "<s>assistant\n"

    tokenizer = PromptTokenizer.checked(render, tokenize, lambda t: "<s>" if t == 1 else chr(t), [0])
    if marker_eats_spaces:
        assert tokenizer is None
    else:
        text = render([{"role": "user", "content": " a <s> b "}])
        assert tokenizer is not None and tokenizer(text) == tokenize(text, True, True)

    def refuses_a_system_message(messages):
        raise ModelError("the model's chat template refused the conversation: no system role")

    assert PromptTokenizer.checked(refuses_a_system_message, tokenize, chr, [0]) is None  # and the model loads


def test_llama_cpp_keeps_room_for_one_tokens_logits_per_batch(llm):
    """Not n_batch tokens' worth (1 GB at n_batch 2048 with Llama-3's vocabulary); prompts longer than a
    batch still prefill (the tests' prompts of over 1,500 tokens run in 512-token batches)."""
    assert llm.llama.context_params.n_outputs_max == 1 and llm.llama.n_batch == 512


def test_stream_yields_pieces_and_respects_max_tokens(llm):
    pieces = list(llm.stream(MESSAGES, 8))
    assert 1 <= len(pieces) <= 8 and "".join(pieces).strip()
    assert all(isinstance(p, str) for p in pieces)


def test_not_a_gguf_and_too_large_files_are_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not found</html>")
    with pytest.raises(ModelFileError, match="not a GGUF model file"):
        check_model_file(fake, n_gpu_layers=0)
    huge = tmp_path / "huge.gguf"
    with open(huge, "wb") as f:  # sparse: takes no disk space
        f.write(b"GGUF")
        f.truncate(10**12)  # 1 TB, more than any test machine has
    with pytest.raises(ModelFileError, match=r"huge.gguf is 1000.0 GB but only .* GB of RAM is free"):
        check_model_file(huge, n_gpu_layers=0)


def test_missing_model_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    env = {"BOT_MODEL_MODELS_DIR": str(tmp_path / "models")}
    with pytest.raises(ModelFileError, match=r"download = false: download Meta-Llama-3-8B-Instruct-Q4_K_M.gguf from "
                                             r"https://huggingface.co/bartowski/Meta-Llama-3-8B-Instruct-GGUF and put it at .*models"):
        model_path(load_config(None, env={**env, "BOT_MODEL_DOWNLOAD": "false"}).model)
    import huggingface_hub.constants

    # As on a machine without network (the variable HF_HUB_OFFLINE is read once, at import).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFileError, match=r"could not download the model .*put it at"):
        model_path(load_config(None, env=env).model)
    with pytest.raises(ModelFileError, match="model.path .*nope.gguf does not exist"):
        model_path(load_config(None, env={"BOT_MODEL_PATH": str(tmp_path / "nope.gguf")}).model)


def test_context_beyond_training_needs_rope_scaling():
    env = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_MODEL_N_CTX": "16384"}
    with pytest.raises(ModelError, match='beyond what .* was trained on \\(8192\\); set model.rope_scaling = "yarn"'):
        LocalModel(load_config(None, env=env).model)
    scaled = LocalModel(load_config(None, env={**env, "BOT_MODEL_ROPE_SCALING": "yarn"}).model)
    assert scaled.llama.n_ctx() == 16384
    assert scaled.llama.context_params.rope_freq_scale == pytest.approx(0.5)


@pytest.fixture(scope="module")
def server():
    """llama-cpp-python's OpenAI-compatible server on SmolLM2, on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(10)


def test_openai_backend_streams_and_counts_with_the_server_tokenizer(server, llm):
    config = load_config(None, env={**ENGINE_ENV, "BOT_MODEL_BACKEND": "openai", "BOT_MODEL_BASE_URL": server}).model
    remote = RemoteModel(config)
    assert remote._counter[0] == "/extras/tokenize/count"
    text = "The quarterly report lists revenue by region."
    assert remote.count(text) == llm.count(text)
    pieces = list(remote.stream(MESSAGES, 8))
    assert 1 <= len(pieces) <= 8 and "".join(pieces).strip()


def test_openai_backend_unreachable_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    config = load_config(None, env={"BOT_MODEL_BACKEND": "openai", "BOT_MODEL_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    with pytest.raises(ModelError, match="cannot reach the model server .* is it running"):
        RemoteModel(config.model)


def _ban_end_of_turn(model) -> dict[int, float]:
    """A logit_bias that bans the model's end-of-turn tokens, so an answer runs to max_tokens."""
    import llama_cpp

    vocab = model.llama._model.vocab
    return {t: float("-inf") for t in range(model.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def test_native_sampling_bans_tokens_and_reuses_the_kv_prefix(llm):
    # With end-of-turn banned in llama.cpp's own sampler chain, the answer runs to max_tokens exactly.
    pieces = list(llm.stream(MESSAGES, 24, logit_bias=_ban_end_of_turn(llm)))
    assert len(pieces) == 24
    first_prompt = llm.tokenize_prompt(MESSAGES)
    assert llm.llama.n_tokens == len(first_prompt) + 23  # the prompt and all answer tokens but the last
    # Greedy, same prompt: the same text as llama-cpp-python's own generate() loop.
    greedy = list(llm.stream(MESSAGES, 12))
    assert "".join(greedy) == _generate_greedily(llm, MESSAGES, 12)
    # The next turn extends the prompt: only the new tokens are decoded, the rest stays in the KV cache.
    follow_up = MESSAGES + [{"role": "assistant", "content": "".join(greedy)}, {"role": "user", "content": "Why?"}]
    tokens = llm.tokenize_prompt(follow_up)
    kept = []
    original_eval = llm.llama.eval
    llm.llama.eval = lambda batch: (kept.append(llm.llama.n_tokens), original_eval(batch))[1]
    try:
        list(llm.stream(follow_up, 4))
    finally:
        del llm.llama.eval
    assert kept[0] >= len(first_prompt) and kept[0] < len(tokens)


def _generate_greedily(llm, messages, max_tokens: int) -> str:
    """llama-cpp-python's own generation loop, greedy: the reference for LocalModel's."""
    import llama_cpp

    tokens = []
    for token in llm.llama.generate(llm.tokenize_prompt(messages), temp=0):
        if llama_cpp.llama_vocab_is_eog(llm.llama._model.vocab, token) or len(tokens) == max_tokens:
            break
        tokens.append(token)
    return llm.llama.detokenize(tokens).decode("utf-8", "replace")


def test_candidates_picked_in_the_graph_sample_as_on_the_cpu(llm):
    """On a GPU the 40 likeliest tokens are found in llama.cpp's graph (there, on the GPU); llama.cpp
    runs that graph sampler on the CPU too, so its choices are checked here against the CPU chain's."""
    import llama_cpp

    model = LocalModel(llm.config)  # greedy, as every model of these tests
    assert model.layers_on_gpu == 0 and not hasattr(model, "_graph_sampler")  # this CPU build samples on the CPU
    model.pick_candidates_in_graph()
    question = [MESSAGES[0], {"role": "user", "content": "Name three colours of the rainbow."}]
    assert "".join(model.stream(question, 16)) == _generate_greedily(llm, question, 16)
    assert llama_cpp.llama_get_sampled_candidates_count_ith(model.llama.ctx, -1) == 40  # what the CPU chain got
    assert len(list(model.stream(question, 20, logit_bias=_ban_end_of_turn(model)))) == 20  # bans still hold


def test_prefilling_throwaway_batches_at_start_leaves_nothing_behind(llm):
    """With the whole model on a GPU, LocalModel prefills a batch of each size class at start so that CUDA
    loads those kernels then (load_prefill_kernels); afterwards the cache is empty and answers are as before.
    A batch of 256 tokens keeps each of its three ranges of sizes and halves what the CPU prefills."""
    model = LocalModel(dataclasses.replace(llm.config, n_batch=256))
    question = [MESSAGES[0], {"role": "user", "content": "Name three colours of the rainbow."}]
    before = "".join(model.stream(question, 16))
    model.load_prefill_kernels()
    assert model.llama.n_tokens == 0
    assert "".join(model.stream(question, 16)) == before


def test_server_backend_starts_supervises_and_stops_its_server(llm):
    from bot.llm import ServerModel, load_model

    env = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_MODEL_BACKEND": "server",
           "BOT_MODEL_SERVER_BINARY": "llama_cpp.server"}
    model = load_model(load_config(None, env=env).model)
    try:
        assert isinstance(model, ServerModel) and model.parallel == 1 and model.restarts == 0
        text = "The quarterly report lists revenue by region."
        assert model.count(text) == llm.count(text)  # the server's own tokenizer
        assert "".join(model.stream(MESSAGES, 8)).strip()
        process = model._process
        process.kill()  # as if it crashed
        process.wait()
        assert "".join(model.stream(MESSAGES, 8)).strip()  # started again before answering
        assert model.restarts == 1 and model._process.pid != process.pid
        again = "Counted on a new connection: the kept one went with the old server."
        assert model.count(again) == llm.count(again)
    finally:
        model.close()
    assert process.poll() is not None and model._process is None


def test_prompt_batches_grow_where_slots_share_them():
    """llama-server's prompt batches on a GPU: 1280 tokens for one slot (the model and 8k of context stay
    within 6.5 GB), 2048 where several slots share each batch (faster for many channels), more if set."""
    from bot.llm import server_speed_flags

    assert server_speed_flags(512, 1)[-4:] == ["-b", "1280", "-ub", "1280"]
    assert server_speed_flags(512, 8)[-4:] == ["-b", "2048", "-ub", "2048"]
    assert server_speed_flags(4096, 8)[-4:] == ["-b", "4096", "-ub", "4096"]


def test_server_backend_names_a_missing_binary():
    env = {**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()), "BOT_MODEL_BACKEND": "server",
           "BOT_MODEL_SERVER_BINARY": "/nonexistent/llama-server"}
    from bot.llm import load_model

    with pytest.raises(ModelError, match="server_binary '/nonexistent/llama-server' is not an executable"):
        load_model(load_config(None, env=env).model)


def test_local_backend_runs_llama_cpp_in_a_child_process_without_torch(llm):
    """The same answers, counts and KV reuse as LocalModel, from a process that never loads torch (whose
    CUDA libraries crash beside a CUDA build of llama.cpp); it is started again if it dies."""
    import torch  # noqa: F401 - this process has torch, as the bot does

    from bot.llm import load_model
    from bot.model_process import ProcessModel

    model = load_model(load_config(None, env={**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path())}).model)
    try:
        assert isinstance(model, ProcessModel) and model.parallel == 1 and model.restarts == 0
        maps = Path(f"/proc/{model._process.pid}/maps").read_text()
        assert "libllama" in maps and "libtorch" not in maps
        assert model.describe() == llm.describe() and model.overhead(3) == llm.overhead(3)
        text = "The quarterly report lists revenue by region."
        assert model.count(text) == llm.count(text)
        answer = "".join(model.stream(MESSAGES, 12))
        llm.llama.reset()  # both prefill the whole prompt: temperature 0, the same model, the same text
        assert answer == "".join(llm.stream(MESSAGES, 12))
        follow_up = [*MESSAGES, {"role": "assistant", "content": answer}, {"role": "user", "content": "And at night?"}]
        assert "".join(model.stream(follow_up, 4)).strip()
        assert model.last_timings["cache_n"] >= len(llm.tokenize_prompt(MESSAGES)) - 1  # the prefix was reused

        cancel = threading.Event()
        pieces = model.stream(MESSAGES, 32, cancel)
        next(pieces)
        cancel.set()
        assert list(pieces) == []  # nothing after the cancel
        unfinished = model.stream(MESSAGES, 32)
        next(unfinished)
        unfinished.close()  # a reader that stops early: the child stops too, and answers the next request
        assert "".join(model.stream(MESSAGES, 12)).strip()

        process = model._process
        pieces = model.stream(MESSAGES, 300, logit_bias=_ban_end_of_turn(llm))  # seconds of answer
        next(pieces)
        process.kill()  # as if llama.cpp crashed mid-answer: the answer ends with the reason
        with pytest.raises(ModelError, match="the model process exited; it is started again"):
            list(pieces)
        assert "".join(model.stream(MESSAGES, 12)) == answer  # started again (an empty cache) before answering
        assert model.restarts == 1 and model._process.pid != process.pid
    finally:
        model.close()
    assert model._process is None


def test_the_model_child_loads_llama_cpp_before_numpy():
    """On an H200 a child that had loaded numpy first died of a segmentation fault while loading the model
    (see bot/model_child.py); this CPU build cannot crash that way, so the order itself is checked."""
    code = ("import sys, bot.model_child; loaded = list(sys.modules); "
            "print(loaded.index('llama_cpp.llama_cpp') < loaded.index('numpy'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_local_backend_says_why_the_model_did_not_load(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))  # the right magic, then nothing llama.cpp can read
    from bot.llm import load_model

    with pytest.raises(ModelError, match="llama.cpp could not load .*broken.gguf"):
        load_model(load_config(None, env={**ENGINE_ENV, "BOT_MODEL_PATH": str(broken)}).model)
    with pytest.raises(ModelError, match='beyond what .* was trained on \\(8192\\); set model.rope_scaling = "yarn"'):
        load_model(load_config(None, env={**ENGINE_ENV, "BOT_MODEL_PATH": str(smollm2_path()),
                                          "BOT_MODEL_N_CTX": "16384"}).model)
