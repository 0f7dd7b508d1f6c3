"""The language model: llama.cpp in this process (LocalModel) or an OpenAI-compatible server (RemoteModel).

Both are blocking and not thread-safe; bot.scheduler runs them on one worker thread. Both offer:
  n_ctx                        the context size in tokens
  count(text)                  tokens in a piece of message content (cached: the prompt builder calls it a lot)
  overhead(n_messages)         tokens the chat template adds around n messages
  stream(messages, max_tokens, cancel)   yields the answer's text pieces

LocalModel renders the chat template stored in the GGUF's metadata and generates from the token list,
so llama.cpp reuses its KV cache for the prompt prefix that did not change since the last answer.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import math
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Protocol

from bot.config import ModelConfig

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
    return RemoteModel(config) if config.backend == "openai" else LocalModel(config)


class LocalModel:
    def __init__(self, config: ModelConfig, path: Path | None = None):
        import llama_cpp

        from bot.model_files import check_model_file, model_path

        self.config = config
        self.path = path or model_path(config)
        check_model_file(self.path, config.n_gpu_layers)
        self.n_ctx = config.n_ctx
        kwargs = dict(n_ctx=config.n_ctx, n_gpu_layers=config.n_gpu_layers, n_batch=config.n_batch,
                      n_threads=config.n_threads or os.cpu_count(), verbose=False)
        if config.rope_scaling != "none":
            trained = _trained_context(llama_cpp.Llama(str(self.path), vocab_only=True, verbose=False).metadata)
            kwargs["rope_freq_scale"] = min(1.0, trained / config.n_ctx)
            if config.rope_scaling == "yarn":
                kwargs.update(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, yarn_orig_ctx=trained)
            else:
                kwargs.update(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR)
        try:
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
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
        self._bos = self._special_text(self.llama.token_bos())
        self._eos = self._special_text(self.llama.token_eos())
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._vocab = self.llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        one = len(self.tokenize_prompt([{"role": "system", "content": "x"}]))
        two = len(self.tokenize_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "x"}]))
        self._per_message = two - one
        self._fixed = one - self._per_message
        self._log_start(meta)

    def _special_text(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def _log_start(self, meta: dict) -> None:
        import llama_cpp

        arch = meta.get("general.architecture", "llama")
        blocks = int(meta.get(f"{arch}.block_count", 0))
        wanted = blocks + 1 if self.config.n_gpu_layers < 0 else min(self.config.n_gpu_layers, blocks + 1)
        on_gpu = wanted if llama_cpp.llama_supports_gpu_offload() else 0
        size = llama_cpp.llama_model_size(self.llama.model)
        log.info("model %s: %d of %d layers on the GPU%s, context %d tokens, weights %.2f GB, process memory %.2f GB",
                 self.path.name, on_gpu, blocks + 1,
                 "" if on_gpu or self.config.n_gpu_layers == 0 else " (this llama.cpp build has no GPU support)",
                 self.n_ctx, size / 1e9, _rss_bytes() / 1e9)

    def describe(self) -> str:
        return f"{self.path.name} (llama.cpp, context {self.n_ctx})"

    @functools.lru_cache(maxsize=16384)
    def count(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def overhead(self, n_messages: int) -> int:
        return self._fixed + self._per_message * n_messages

    def render(self, messages: list[Message]) -> str:
        def raise_exception(message: str):
            raise ModelError(f"the model's chat template refused the conversation: {message}")

        return self._template.render(messages=messages, bos_token=self._bos, eos_token=self._eos,
                                     add_generation_prompt=True, raise_exception=raise_exception)

    def tokenize_prompt(self, messages: list[Message]) -> list[int]:
        text = self.render(messages)
        add_bos = self._add_bos and not (self._bos and text.startswith(self._bos))
        # special=True turns the template's markers into control tokens; message content is defanged by
        # bot.prompt so that a user or a PDF cannot write those markers itself.
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logits_processor=None) -> Iterator[str]:
        """Yield text pieces until an end-of-turn token, max_tokens, or `cancel` is set.

        logits_processor is llama.cpp's hook (the benchmark bans end-of-turn with it).
        """
        tokens = self.tokenize_prompt(messages)
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        if max_tokens <= 0:
            raise ModelError(f"the prompt ({len(tokens)} tokens) fills the whole context ({self.n_ctx})")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        generated = 0
        for token in self.llama.generate(tokens, temp=self.config.temperature, top_p=self.config.top_p,
                                         logits_processor=logits_processor):
            if self._is_eog(self._vocab, token) or (cancel is not None and cancel.is_set()):
                break
            piece = decoder.decode(self.llama.detokenize([token]))
            if piece:
                yield piece
            generated += 1
            if generated >= max_tokens:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


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
        self.n_ctx = config.n_ctx
        self.base = config.base_url.rstrip("/")
        self._root = self.base.removesuffix("/v1")
        self._counter = self._find_counter()
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
        with self._post(self._root + path, body(text)) as response:
            return read(json.load(response))

    def overhead(self, n_messages: int) -> int:
        return self._PER_MESSAGE * (n_messages + 1)

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None) -> Iterator[str]:
        body = {"messages": messages, "max_tokens": max_tokens, "stream": True,
                "temperature": self.config.temperature, "top_p": self.config.top_p}
        if self.config.remote_model:
            body["model"] = self.config.remote_model
        try:
            response = self._post(self.base + "/chat/completions", body)
        except urllib.error.HTTPError as e:
            raise ModelError(f"the model server answered {e.code}: {e.read()[:300].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ModelError(f"cannot reach the model server at {self.base} ({e})") from None
        with response:
            for line in response:  # server-sent events: "data: {...}" lines, then "data: [DONE]"
                if cancel is not None and cancel.is_set():
                    return
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                choices = json.loads(data).get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece


def _trained_context(meta: dict) -> int:
    arch = meta.get("general.architecture", "llama")
    return int(meta.get(f"{arch}.context_length", 0)) or 4096


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
