"""The language model: llama.cpp (LocalModel; the `local` backend runs it in a child process, see
bot.model_process) or an OpenAI-compatible server (RemoteModel, and ServerModel: a llama-server the bot starts).

All are blocking and not thread-safe, but for count; bot.scheduler runs them on its worker thread. All offer:
  n_ctx                        the context size in tokens
  count(text)                  tokens in a piece of message content (cached: the prompt builder calls it a lot,
                               from several threads at once; tokenizing reads only the vocabulary)
  overhead(n_messages)         tokens the chat template adds around n messages
  stream(messages, max_tokens, cancel)   yields the answer's text pieces

LocalModel renders the chat template stored in the GGUF's metadata and generates from the token list,
so llama.cpp reuses its KV cache for the prompt prefix that did not change since the last answer.
ServerModel renders the template llama-server reports and sends it the prompt's tokens; llama-server
reuses a slot's KV cache alike. Both tokenize only the new pieces of a prompt (PromptTokenizer).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import http.client
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from array import array
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from bot.config import ModelConfig
from bot.model_files import check_model_file, model_path, proc_kib

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class ModelError(RuntimeError):
    """The model cannot be loaded or reached; the message says what to do."""


class LLM(Protocol):
    n_ctx: int

    def count(self, text: str) -> int: ...

    def overhead(self, n_messages: int) -> int: ...

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None) -> Iterator[str]: ...

    def describe(self) -> str: ...


def load_model(config: ModelConfig) -> LLM:
    if config.backend == "server":
        return ServerModel(config)
    if config.backend == "openai":
        return RemoteModel(config)
    from bot.model_process import ProcessModel

    return ProcessModel(config)  # LocalModel in a child process, away from torch's CUDA libraries


_GGML_TYPE = {"f16": 1, "q8_0": 8}  # ggml_type values for the KV cache
# The least prompt batch (and micro-batch) on a GPU, both backends. Larger batches prefill a long prompt
# faster, and llama.cpp's compute buffer grows with them. On an H200 (2026-12-03, LocalModel, prefill on
# cuBLAS), after a ~1,800-token prompt, at batches of 1280 / 1536 / 1792 / 2048 tokens: GPU memory
# 6,571 / 6,637 / 6,705 / 6,763 MiB; that prompt's first token 0.118-0.119 / 0.114-0.122 / 0.101-0.106 /
# 0.097-0.119 s; a follow-up's ~1,070 new tokens (one batch from 1280 on) 79 ms at each size; decode the
# same. 1280 keeps the model and an 8k context under 6.5 GB once prompted.
GPU_PREFILL_BATCH = 1280
# With several llama-server slots a batch packs the prompts of several channels. On an H100 (2026-12-06,
# 16 channels asking at once with ~1,200-token prompts, two runs each) 2048-token batches served 763-770
# tokens/s with a p95 first token of 1.20-1.28 s, against 697-718 and 1.38-1.42 s at 1280, for 200 MiB
# more GPU memory.
GPU_PREFILL_BATCH_SHARED = 2048
TOP_K = 40  # candidates the sampler chain weighs for each token (llama-cpp-python's default)


def gpu_prefill_batch(n_batch: int, parallel: int) -> int:
    """The prompt batch (and micro-batch) on a GPU for one sequence or for `parallel` of them."""
    return max(n_batch, GPU_PREFILL_BATCH if parallel == 1 else GPU_PREFILL_BATCH_SHARED)


def prefill_kernel_sizes(n_batch: int) -> list[int]:
    """One prompt batch size of each class llama.cpp's CUDA build picks a matrix kernel for: one for each
    size up to 8 tokens, one for every 8 up to 128, cuBLAS's choice above (see LocalModel.load_prefill_kernels)."""
    return [*range(2, 8), *range(8, 129, 8), *range(192, n_batch + 1, 64)]


class ChatTemplate:
    """A model's chat template (Jinja, as stored in its GGUF) rendered into the prompt's text.

    Where the tokenizer adds the BOS token itself (`tokenizer_adds_bos`), the BOS the template writes at
    the start is left out, so the prompt holds one, as llama.cpp's server does for its chat endpoint.
    """

    def __init__(self, source: str, bos: str, eos: str, tokenizer_adds_bos: bool):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        self.bos, self.eos = bos, eos
        self._drop = bos if tokenizer_adds_bos else ""

    def render(self, messages: list[Message]) -> str:
        def raise_exception(message: str):
            raise ModelError(f"the model's chat template refused the conversation: {message}")

        text = self._template.render(messages=messages, bos_token=self.bos, eos_token=self.eos,
                                     add_generation_prompt=True, raise_exception=raise_exception)
        return text[len(self._drop):] if self._drop and text.startswith(self._drop) else text


# A conversation whose rendering has each kind of piece a prompt has, with spaces and blank lines at the
# edges of the messages: PromptTokenizer.checked tokenizes it both ways.
_PROBE = [{"role": "system", "content": "Rules:\n- one\n\n"}, {"role": "user", "content": " Sources [1] \n\nWhy? "},
          {"role": "assistant", "content": "Because [1].\n"}, {"role": "user", "content": "And then?"}]


class PromptTokenizer:
    """A rendered prompt's tokens, each piece of text between two special tokens tokenized once and cached.

    llama.cpp splits a prompt at its special tokens (<|eot_id|>, <|im_start|> ...) and tokenizes the text
    between two of them on its own, so a prompt's tokens are its pieces' tokens strung together. A
    channel's next prompt repeats the pieces of its last one but for the new question's: only those are
    tokenized. On 2 CPU cores, tokenizing a 5,900-token conversation whole took 12 ms with SmolLM2's
    tokenizer and 4 ms with Llama-3's, before every answer's prefill could start.
    """

    def __init__(self, tokenize_piece: Callable[[str], Sequence[int]], specials: dict[str, int], bos: list[int]):
        self._specials, self._bos = specials, bos
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")
        self._piece = functools.lru_cache(maxsize=4096)(lambda text: array("i", tokenize_piece(text)))

    @classmethod
    def checked(cls, render: Callable[[list[Message]], str], tokenize: Callable[[str, bool, bool], list[int]],
                token_text: Callable[[int], str], bos: list[int]) -> PromptTokenizer | None:
        """One for a model, or None where its tokenizer does not split as assumed (special tokens that eat
        the spaces beside them, or an EOS added at the end): there, prompts are tokenized whole.
        tokenize(text, parse_special, add_bos); bos: what the model adds to a prompt, if anything."""
        try:
            probe = render(_PROBE)
        except ModelError:  # a template that takes no system message, say: nothing to check with
            log.info("prompts are tokenized whole: the chat template refused the sample conversation")
            return None
        whole = tokenize(probe, True, True)
        specials = {}
        for token in set(whole) - set(tokenize(probe, False, True)):  # in the probe's markers, or beside them
            text = token_text(token)
            if text and tokenize(text, True, False) == [token] and tokenize(text, False, False) != [token]:
                specials[text] = token
        tokenizer = cls(lambda piece: tokenize(piece, True, False), specials, bos) if specials else None
        if tokenizer is None or tokenizer(probe) != whole:
            log.info("prompts are tokenized whole: this model's tokenizer does not split them at its special tokens")
            return None
        return tokenizer

    def __call__(self, text: str) -> list[int]:
        tokens = list(self._bos)
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:
                tokens.append(self._specials[piece])
            elif piece:
                tokens += self._piece(piece)
        return tokens


class LocalModel:
    parallel = 1  # one llama_context, one sequence: the scheduler runs one answer at a time

    def __init__(self, config: ModelConfig, path: Path | None = None):
        import llama_cpp

        self.config = config
        self.path = path or model_path(config)
        check_model_file(self.path, config.n_gpu_layers)
        self.n_ctx = config.n_ctx
        batch = config.n_batch
        if config.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload():
            batch = min(gpu_prefill_batch(batch, self.parallel), config.n_ctx)
        kwargs = dict(n_ctx=config.n_ctx, n_gpu_layers=config.n_gpu_layers, n_batch=batch, n_ubatch=batch,
                      n_threads=config.n_threads or os.cpu_count(), flash_attn=config.flash_attn,
                      type_k=_GGML_TYPE[config.kv_cache_type], type_v=_GGML_TYPE[config.kv_cache_type], verbose=False)
        if config.rope_scaling != "none":
            trained = _trained_context(llama_cpp.Llama(str(self.path), vocab_only=True, verbose=False).metadata)
            kwargs["rope_freq_scale"] = min(1.0, trained / config.n_ctx)
            if config.rope_scaling == "yarn":
                kwargs.update(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, yarn_orig_ctx=trained)
            else:
                kwargs.update(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR)
        try:
            with _one_output_per_batch():
                self.llama = llama_cpp.Llama(str(self.path), **kwargs)
        except ValueError as e:  # llama.cpp only says "Failed to load model from file"
            raise ModelError(f"llama.cpp could not load {self.path}: {e}") from None
        meta = self.llama.metadata
        trained = _trained_context(meta)
        if config.n_ctx > trained and config.rope_scaling == "none":
            raise ModelError(f"model.n_ctx = {config.n_ctx} is beyond what {self.path.name} was trained on ({trained}); "
                             f'set model.rope_scaling = "yarn" (or "linear") or lower model.n_ctx')
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{self.path.name} carries no chat template (tokenizer.chat_template) in its metadata; "
                             f"use a GGUF converted with its template, e.g. an -Instruct model")
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._template = ChatTemplate(template, self._special_text(self.llama.token_bos()),
                                      self._special_text(self.llama.token_eos()), self._add_bos)
        self._vocab = self.llama._model.vocab
        self._tokenize = PromptTokenizer.checked(self.render, self._tokenize_text, self._special_text,
                                                 [self.llama.token_bos()] if self._add_bos else [])
        self.last_timings: dict = {}  # tokens of the last prompt reused from the KV cache (cache_n) and prefilled
        self._is_eog = llama_cpp.llama_vocab_is_eog
        one = len(self.tokenize_prompt([{"role": "system", "content": "x"}]))
        two = len(self.tokenize_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "x"}]))
        self._per_message = two - one
        self._fixed = one - self._per_message
        self._log_start(meta)
        if self.layers_on_gpu == self.layers:
            self.pick_candidates_in_graph()
            self.load_prefill_kernels()

    def pick_candidates_in_graph(self) -> None:
        """Find each new token's 40 likeliest candidates in llama.cpp's compute graph (on the GPU when
        the whole model is there), so the CPU sampler chain weighs those 40 instead of 128k logits.

        On an H200 (2026-12-03), at 1,800 tokens of context, a decode step took 3.81 ms (as llama-bench's)
        and sampling on the CPU 0.21 ms more (greedy 0.38), against 0.01 ms this way: the engine decoded
        256-260 tokens/s instead of 238-249, for 68 MiB more GPU memory. The chain stays attached for the
        context's lifetime; attaching makes llama.cpp re-plan its graph (~50 ms), done here with one token.
        """
        import llama_cpp as lc

        if not hasattr(lc, "llama_set_sampler"):  # llama-cpp-python before llama.cpp's backend sampling
            log.info("this llama-cpp-python samples on the CPU only")
            return
        # The chain must outlive the context: kept here, never freed.
        self._graph_sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(self._graph_sampler, lc.llama_sampler_init_top_k(TOP_K))
        if not lc.llama_set_sampler(self.llama.ctx, 0, self._graph_sampler):
            log.warning("llama.cpp could not take the top-%d sampler into its graph; sampling on the CPU", TOP_K)
            return
        self.llama.eval([max(self.llama.token_bos(), 0)])
        self.llama.reset()  # the next prompt's eval drops that token from the cache

    def load_prefill_kernels(self) -> None:
        """Prefill a throwaway batch of each size class a prompt can bring, once, at start.

        CUDA loads a kernel the first time it runs, and llama.cpp picks its matrix kernels by batch size
        (one for each size up to 8 tokens, one for every 8 up to 128, cuBLAS's choice above). On an H200
        (2026-12-04, the 8B-shaped model, a fresh process, batches of 29 sizes from 2 to 1,280 tokens after
        a 4,750-token prompt, each size twice) first batches took longer: 978 tokens 117 ms against 70
        the second time, 400 tokens 86 against 43, 8 tokens 24 against 9, and a first 1,800-token prompt
        340 ms against 119. After this (1.25 s) no size's first batch took 2 ms longer than its second;
        the GPU then held 6,573 MiB, as it did after those prompts without it.
        """
        token = max(self.llama.token_bos(), 0)
        for n in prefill_kernel_sizes(self.llama.n_batch):
            self.llama.reset()
            self.llama.eval([token] * n)
        self.llama.reset()

    def _special_text(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def _log_start(self, meta: dict) -> None:
        import llama_cpp

        arch = meta.get("general.architecture", "llama")
        self.layers = int(meta.get(f"{arch}.block_count", 0)) + 1  # + the output layer
        wanted = self.layers if self.config.n_gpu_layers < 0 else min(self.config.n_gpu_layers, self.layers)
        self.layers_on_gpu = wanted if llama_cpp.llama_supports_gpu_offload() else 0
        size = llama_cpp.llama_model_size(self.llama.model)
        log.info("model %s: %d of %d layers on the GPU%s, context %d tokens, weights %.2f GB, process memory %.2f GB",
                 self.path.name, self.layers_on_gpu, self.layers,
                 "" if self.layers_on_gpu or self.config.n_gpu_layers == 0 else " (this llama.cpp build has no GPU support)",
                 self.n_ctx, size / 1e9, proc_kib("/proc/self/status", "VmRSS") * 1024 / 1e9)

    def describe(self) -> str:
        return f"{self.path.name} (llama.cpp, context {self.n_ctx})"

    @functools.lru_cache(maxsize=16384)
    def count(self, text: str) -> int:
        return len(self._tokenize_text(text, special=False, bos=False))

    def overhead(self, n_messages: int) -> int:
        return self._fixed + self._per_message * n_messages

    def render(self, messages: list[Message]) -> str:
        return self._template.render(messages)

    def tokenize_prompt(self, messages: list[Message]) -> list[int]:
        # Special tokens are parsed: the template's markers become control tokens; message content is
        # defanged by bot.prompt so that a user or a PDF cannot write those markers itself.
        text = self.render(messages)
        if self._tokenize is not None:
            return self._tokenize(text)
        return self._tokenize_text(text, special=True, bos=True)

    def _tokenize_text(self, text: str, special: bool, bos: bool) -> list[int]:
        """llama.cpp's tokens for `text`; special: its markers become control tokens; bos: the model's BOS
        first, where its tokenizer adds one to a prompt."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=bos and self._add_bos, special=special)

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logit_bias: dict[int, float] | None = None) -> Iterator[str]:
        """Yield text pieces until an end-of-turn token, max_tokens, or `cancel` is set.

        logit_bias ({token: bias}, -inf bans) runs inside llama.cpp's sampler chain, on the 40 likeliest
        tokens when those are picked in the graph (see pick_candidates_in_graph).
        """
        tokens = self.tokenize_prompt(messages)
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        if max_tokens <= 0:
            raise ModelError(f"the prompt ({len(tokens)} tokens) fills the whole context ({self.n_ctx})")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for data in self._generate(tokens, max_tokens, cancel, logit_bias or {}):
            piece = decoder.decode(data)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _sampler_chain(self, logit_bias: dict[int, float]):
        """llama.cpp's own sampler chain (the same steps Llama.generate uses by default: top-k 40, top-p,
        min-p 0.05, temperature), so a token costs no Python beyond a few ctypes calls."""
        import llama_cpp as lc

        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if logit_bias:
            biases = (lc.llama_logit_bias * len(logit_bias))(
                *[lc.llama_logit_bias(token, bias) for token, bias in logit_bias.items()])
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_logit_bias(self.llama.n_vocab(), len(logit_bias), biases))
        if self.config.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        for sampler in (lc.llama_sampler_init_top_k(TOP_K), lc.llama_sampler_init_top_p(self.config.top_p, 1),
                        lc.llama_sampler_init_min_p(0.05, 1), lc.llama_sampler_init_temp(self.config.temperature),
                        lc.llama_sampler_init_dist(int.from_bytes(os.urandom(4), "little"))):
            lc.llama_sampler_chain_add(chain, sampler)
        return chain

    def _generate(self, tokens: list[int], max_tokens: int, cancel, logit_bias) -> Iterator[bytes]:
        """Prefill only what differs from the tokens already in the KV cache, then decode one token at a
        time with llama.cpp's sampler chain: per token, a decode, a sample and a token_to_piece call."""
        import ctypes

        import llama_cpp as lc

        llama = self.llama
        cached = llama.input_ids[:llama.n_tokens].tolist()
        same = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            same += 1
        llama.n_tokens = min(same, len(tokens) - 1)  # at least one token to decode, for fresh logits
        self.last_timings = {"cache_n": llama.n_tokens, "prompt_n": len(tokens) - llama.n_tokens}  # as llama-server's
        started = time.perf_counter()
        llama.eval(tokens[llama.n_tokens:])  # drops the cache beyond the shared prefix, fills in the rest
        lc.llama_synchronize(llama.ctx)  # a GPU may still be computing; sampling would wait for it anyway
        self.last_timings["prompt_ms"] = 1000 * (time.perf_counter() - started)
        ctx, vocab, chain = llama.ctx, self._vocab, self._sampler_chain(logit_bias)
        one = (lc.llama_token * 1)()
        buffer = ctypes.create_string_buffer(256)
        is_eog, sample, to_piece, decode = self._is_eog, lc.llama_sampler_sample, lc.llama_token_to_piece, lc.llama_decode
        try:
            for generated in range(max_tokens):
                token = sample(chain, ctx, -1)
                if is_eog(vocab, token) or (cancel is not None and cancel.is_set()):
                    break
                n = to_piece(vocab, token, buffer, 256, 0, False)
                yield buffer.raw[:n] if n > 0 else b""
                if generated + 1 == max_tokens or llama.n_tokens >= self.n_ctx:
                    break
                one[0] = token
                if decode(ctx, lc.llama_batch_get_one(one, 1)) != 0:
                    raise ModelError("llama_decode failed while generating")
                llama.input_ids[llama.n_tokens] = token  # the KV cache now holds it: reusable next turn
                llama.n_tokens += 1
        finally:
            lc.llama_sampler_free(chain)


class RemoteModel:
    """An OpenAI-compatible server (llama.cpp's server, vLLM): /v1/chat/completions with streaming.

    Token counts come from the server's tokenizer when it has an endpoint for it: llama-cpp-python's
    POST /extras/tokenize/count, or llama.cpp's llama-server POST /tokenize. Otherwise (vLLM with no
    tokenizer route) they are estimated as one token per 3 characters, which overcounts English
    (about 4 per token) so the prompt stays inside the context. The server applies its model's own
    chat template; its overhead is counted as 8 tokens per message (Llama-3 uses 5).
    """

    _PER_MESSAGE = 8

    def __init__(self, config: ModelConfig):
        self.config = config
        # Requests the scheduler may send at once; a server someone else runs decides for itself.
        self.parallel = config.parallel
        self.n_ctx = config.n_ctx
        self.base = config.base_url.rstrip("/")
        self._root = self.base.removesuffix("/v1")
        self._counter = self._find_counter()
        self.last_timings: dict = {}  # llama-server's timings of the last answer streamed (prompt_n, cache_n, ...)
        log.info("model server %s: token counts %s, context %d tokens", self.base,
                 f"from {self._counter[0]}" if self._counter else "estimated (3 characters per token)", self.n_ctx)

    def _post(self, url: str, body: dict, timeout: float | None = None):
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(url, json.dumps(body).encode(), headers)
        return urllib.request.urlopen(request, timeout=timeout or self.config.request_timeout_s)

    def _find_counter(self):
        candidates = [("/extras/tokenize/count", lambda t: {"input": t}, lambda r: r["count"]),
                      ("/tokenize", lambda t: {"content": t}, lambda r: len(r["tokens"]))]
        for path, body, read in candidates:
            try:
                with self._post(self._root + path, body("hello"), timeout=10) as response:
                    read(json.load(response))
                return path, body, read
            except urllib.error.HTTPError:
                continue
            except (urllib.error.URLError, OSError) as e:
                raise ModelError(f"cannot reach the model server at {self.base} ({e}); is it running? "
                                 f"(model.base_url)") from None
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def describe(self) -> str:
        return f"{self.config.remote_model or 'default model'} at {self.base} (context {self.n_ctx})"

    @functools.lru_cache(maxsize=16384)
    def count(self, text: str) -> int:
        if self._counter is None:
            return math.ceil(len(text) / 3)
        path, body, read = self._counter
        return read(self._post_json(path, body(text)))

    def _post_json(self, path: str, body: dict) -> dict:
        with self._post(self._root + path, body) as response:
            return json.load(response)

    def overhead(self, n_messages: int) -> int:
        return self._PER_MESSAGE * (n_messages + 1)

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logit_bias: dict[int, float] | None = None) -> Iterator[str]:
        body = {"messages": messages, "max_tokens": max_tokens, "stream": True,
                "temperature": self.config.temperature, "top_p": self.config.top_p}
        if logit_bias:  # OpenAI's form; -100 bans a token in practice
            body["logit_bias"] = {str(t): max(-100.0, min(100.0, b)) for t, b in logit_bias.items()}
        if self.config.remote_model:
            body["model"] = self.config.remote_model
        for chunk in self._events(self.base + "/chat/completions", body, cancel):
            choices = chunk.get("choices") or [{}]
            if piece := (choices[0].get("delta") or {}).get("content"):
                yield piece

    def _events(self, url: str, body: dict, cancel: threading.Event | None) -> Iterator[dict]:
        """The JSON objects a streaming request sends back as server-sent events ("data: {...}" lines)."""
        try:
            response = self._post(url, body)
        except urllib.error.HTTPError as e:
            raise ModelError(f"the model server answered {e.code}: {e.read()[:300].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ModelError(f"cannot reach the model server at {self.base} ({e})") from None
        with response:
            for line in response:
                if cancel is not None and cancel.is_set():
                    return
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ModelError(f"the model server stopped the answer: {str(chunk['error'])[:300]}")
                if "timings" in chunk:  # llama-server: tokens prefilled, reused from the cache, decode speed
                    self.last_timings = chunk["timings"]
                    log.debug("model server timings: %s", self.last_timings)
                yield chunk


class ServerModel(RemoteModel):
    """llama.cpp's llama-server, started and supervised by the bot, reached as an OpenAI-compatible server.

    One process on 127.0.0.1 with `model.parallel` slots of `model.n_ctx` tokens each: llama.cpp's
    continuous batching decodes the answers of several channels in one GPU pass, and each slot keeps its
    last prompt in the KV cache, so a channel's next question only prefills what changed (slots are
    picked by prompt similarity). If the process dies it is started again before the next answer.
    The bot renders the model's chat template itself (the one llama-server reports) and sends the
    prompt's token ids to /completion. llama-server's chat endpoint parses the messages and renders them
    before the prefill starts: on the 2-core CPU, with a ~4,400-token prompt, its headers came after 9.9 ms
    against 5.3 ms from /completion given the text; on the H200 machine, 11.5-17 ms into a follow-up
    question's ~0.1 s. Given token ids, it tokenizes nothing: on the 2-core CPU, a follow-up after a
    6,200-token conversation waited 4.0 ms besides its prefill, against 12.8 ms given the text.
    server_binary may also be "llama_cpp.server" (llama-cpp-python's own server, one slot, OpenAI chat
    only) for machines without llama-server.
    """

    def __init__(self, config: ModelConfig, path: Path | None = None, start_timeout_s: float = 300.0):
        self.path = path or model_path(config)
        on_gpu = check_model_file(self.path, config.n_gpu_layers)
        self._whole_model_on_gpu = on_gpu and config.n_gpu_layers < 0
        self.environment = dict(os.environ, **server_speed_env(self._whole_model_on_gpu))
        self.start_timeout_s = start_timeout_s
        self._python_server = config.server_binary == "llama_cpp.server"
        if not self._python_server and shutil.which(config.server_binary) is None:
            raise ModelError(f"model.server_binary {config.server_binary!r} is not an executable file or a program on "
                             f"PATH; build llama.cpp's llama-server (cmake --build build --target llama-server) or "
                             f'use model.backend = "local"')
        port = config.server_port or free_port()
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.restarts = -1
        config = dataclasses.replace(config, base_url=f"http://127.0.0.1:{port}/v1",
                                     parallel=1 if self._python_server else config.parallel)
        self.config, self.port = config, port
        self._connections = threading.local()  # each thread's kept-open connection, for token counts
        self._ensure_running()
        super().__init__(config)
        self._template = None if self._python_server else self._chat_template()
        self._tokenize = self._prompt_tokenizer() if self._template is not None else None

    def _chat_template(self) -> ChatTemplate | None:
        """llama-server's chat template (the GGUF's, or its default), told whether the server's tokenizer
        adds the BOS token to a prompt itself."""
        with urllib.request.urlopen(self._root + "/props", timeout=10) as response:
            props = json.load(response)
        if not props.get("chat_template"):
            return None
        bos_text = props.get("bos_token", "")
        bos = self._post_json("/tokenize", {"content": bos_text})["tokens"] if bos_text else []
        added = self._post_json("/tokenize", {"content": "", "add_special": True})["tokens"]
        self._bos = bos[:1] if bos and added[:1] == bos[:1] else []  # what the tokenizer adds to a prompt
        return ChatTemplate(props["chat_template"], bos_text, props.get("eos_token", ""), bool(self._bos))

    def _prompt_tokenizer(self) -> PromptTokenizer | None:
        """Prompts go to llama-server as token ids, so it tokenizes none of them (see PromptTokenizer)."""
        def tokenize(text: str, special: bool, bos: bool) -> list[int]:
            return self._post_json("/tokenize", {"content": text, "add_special": bos, "parse_special": special})["tokens"]

        def token_text(token: int) -> str:
            return self._post_json("/detokenize", {"tokens": [token]})["content"]

        return PromptTokenizer.checked(self._template.render, tokenize, token_text, self._bos)

    def command(self) -> list[str]:
        c = self.config
        if self._python_server:
            return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.path), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(c.n_ctx), "--n_gpu_layers", str(c.n_gpu_layers),
                    "--n_batch", str(c.n_batch), "--flash_attn", str(c.flash_attn),
                    "--n_threads", str(c.n_threads or os.cpu_count())]
        return [c.server_binary, "-m", str(self.path), "--host", "127.0.0.1", "--port", str(self.port),
                # -c is split between the slots: each gets n_ctx tokens and its own KV range (with a unified
                # cache, --kv-unified, 16 channels got 199 tokens/s on an H100, against 469 for llama-server
                # without it in the same run). Each slot keeps its last prompt in the KV cache.
                "-c", str(c.n_ctx * c.parallel), "-np", str(c.parallel), "--cont-batching",
                *server_speed_flags(c.n_batch, c.parallel), "-ngl", str(999 if c.n_gpu_layers < 0 else c.n_gpu_layers),
                "-fa", "on" if c.flash_attn else "off", "-ctk", c.kv_cache_type, "-ctv", c.kv_cache_type,
                "-t", str(c.n_threads or os.cpu_count()), "--jinja", "--no-webui"]

    def _ensure_running(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            if self._process is not None:
                log.warning("model server exited with status %s; starting it again", self._process.returncode)
            self.restarts += 1
            self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, start_new_session=True, env=self.environment)
            stderr_tail: list[bytes] = []
            threading.Thread(target=_drain, args=(self._process.stderr, stderr_tail), daemon=True).start()
            deadline = time.monotonic() + self.start_timeout_s
            url = f"http://127.0.0.1:{self.port}/v1/models"
            while True:
                if self._process.poll() is not None:
                    time.sleep(0.2)  # let the reader thread take the last lines
                    tail = b"".join(stderr_tail)[-800:].decode("utf-8", "replace").strip()
                    raise ModelError(f"the model server ({self.command()[0]}) exited with status "
                                     f"{self._process.returncode} while starting: {tail}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass  # still loading (llama-server answers 503 until the model is in memory)
                if time.monotonic() > deadline:
                    self.close()
                    raise ModelError(f"the model server did not answer within {self.start_timeout_s:.0f} s")
                time.sleep(0.1)
            log.info("model server up on port %d (pid %d, %d slots)", self.port, self._process.pid, self.config.parallel)
            if self._whole_model_on_gpu and not self._python_server:
                self.load_prefill_kernels()

    def load_prefill_kernels(self) -> None:
        """LocalModel.load_prefill_kernels in llama-server's process: a throwaway prompt of each size class.

        On the H200 (2026-12-05, benchmarks/first_batches.py --server) without it a first 1,800-token prompt
        took 398 ms against 149 the second time, and first batches up to 45 ms longer than second ones (978
        tokens 117 against 72, 400 tokens 79 against 45); with it 118 ms, and never more than 0.4 ms longer.
        """
        c = self.config
        batch = min(gpu_prefill_batch(c.n_batch, c.parallel), c.n_ctx - 1)  # n_predict's token fits
        for n in prefill_kernel_sizes(batch):
            self._post_json("/completion", {"prompt": [0] * n, "n_predict": 1, "cache_prompt": False})

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logit_bias: dict[int, float] | None = None) -> Iterator[str]:
        self._ensure_running()
        if self._template is None:
            yield from super().stream(messages, max_tokens, cancel, logit_bias)
            return
        text = self._template.render(messages)
        body = {"prompt": self._tokenize(text) if self._tokenize is not None else text, "n_predict": max_tokens,
                "stream": True, "cache_prompt": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
        if logit_bias:  # false bans a token
            body["logit_bias"] = [[t, False if b == float("-inf") else b] for t, b in logit_bias.items()]
        for chunk in self._events(self._root + "/completion", body, cancel):
            if piece := chunk.get("content"):
                yield piece

    def _post_json(self, path: str, body: dict) -> dict:
        """A request on this thread's kept-open connection: a prompt counts several new texts before its
        first token, and a connection each costs ~0.6 ms more per count (urllib against keep-alive)."""
        for attempt in (1, 2):
            connection = getattr(self._connections, "value", None)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.config.request_timeout_s)
                self._connections.value = connection
            try:
                connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException) as e:  # closed when idle, or a restarted server
                connection.close()
                self._connections.value = None
                if attempt == 2:
                    raise ModelError(f"cannot reach the model server on 127.0.0.1:{self.port} ({e})") from None
                continue
            if response.status != 200:
                raise ModelError(f"the model server answered {response.status} to {path}: "
                                 f"{data[:300].decode('utf-8', 'replace')}")
            return json.loads(data)

    def describe(self) -> str:
        return f"{self.path.name} (llama-server, {self.config.parallel} slots of {self.n_ctx} tokens)"

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_speed_flags(n_batch: int, parallel: int) -> list[str]:
    """The llama-server flags chosen for speed (the GPU benchmark runs raw llama-server with them too).

    The host-memory prompt cache (--cache-ram) doubled the first-token time of a new ~1,800-token
    prompt on an H100 (0.37 s against 0.19 s), so it is off; prompt batches of gpu_prefill_batch tokens
    prefill faster there than llama-server's default 512.
    """
    batch = str(gpu_prefill_batch(n_batch, parallel))
    return ["--cache-ram", "0", "-b", batch, "-ub", batch]


def server_speed_env(whole_model_on_gpu: bool) -> dict[str, str]:
    """The environment llama-server gets for speed (the GPU benchmark's raw llama-server too).

    LLAMA_SERVER_GRAPH_TOP_K (patches/llama-server-graph-top-k.patch): each slot keeps a top-40
    sampler in llama.cpp's graph, as LocalModel.pick_candidates_in_graph does, so the CPU sampler
    chain weighs 40 candidates instead of 128k logits. Only with the whole model on a GPU: there the
    graph picks them in microseconds. A llama-server without the patch ignores it.
    """
    return {"LLAMA_SERVER_GRAPH_TOP_K": str(TOP_K)} if whole_model_on_gpu else {}


_params_lock = threading.Lock()


@contextlib.contextmanager
def _one_output_per_batch():
    """Llamas made inside get n_outputs_max = 1, which llama-cpp-python does not expose.

    Unset, llama.cpp reserves compute memory for the logits of every token of a micro-batch: at
    n_batch 2048 with Llama-3's 128k vocabulary, 1 GB of GPU memory (7.0 GB in all against 6.2 GB at
    512, measured on an H200). LocalModel only reads the last token's logits, as llama-server does.
    """
    import llama_cpp.llama_cpp as raw

    default = raw.llama_context_default_params

    def params():
        chosen = default()
        chosen.n_outputs_max = 1
        return chosen

    with _params_lock:
        raw.llama_context_default_params = params
        try:
            yield
        finally:
            raw.llama_context_default_params = default


def _drain(stream, tail: list[bytes]) -> None:
    for line in stream:  # keeps the pipe from filling up; the last lines explain a failed start
        tail.append(line)
        del tail[:-20]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the bot, a benchmark or a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trained_context(meta: dict) -> int:
    arch = meta.get("general.architecture", "llama")
    return int(meta.get(f"{arch}.context_length", 0)) or 4096

