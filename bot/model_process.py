"""The `local` backend: LocalModel (llama.cpp) in a child process of the bot, reached over a socket pair.

Why a process of its own: a CUDA build of llama.cpp and torch's CUDA libraries crash together in one
process (measured on an H200 with CUDA 13: loading the model after torch had started CUDA was a
segmentation fault, importing torch after the model an abort), and the bot's embedder is torch. The
child imports llama.cpp and never torch, so the model gets every layer on the GPU beside a GPU embedder.
Each answer's tokens come back one message at a time (a few microseconds each against ~4 ms a token on
a GPU); token counts are cached on this side.

Messages, pickled tuples (the two ends are the same program):
  bot -> model:  ("count", id, text)  ("stream", id, messages, max_tokens, logit_bias)  ("cancel", id)
  model -> bot:  ("ready", info) or ("failed", reason) once; then ("count", id, n)  ("piece", id, text)
                 ("done", id, timings)  ("error", id, reason)
The child ends when the bot closes its end (or dies): it reads end-of-file.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterator

from bot.config import ModelConfig
from bot.llm import Message, ModelError
from bot.model_files import check_model_file, model_path

log = logging.getLogger(__name__)


class ProcessModel:
    """The LLM protocol of bot.llm, answered by LocalModel in a child process (started again if it dies)."""

    parallel = 1  # one llama_context, one sequence: the scheduler runs one answer at a time

    def __init__(self, config: ModelConfig, path: Path | None = None, start_timeout_s: float = 600.0):
        self.config = config
        self.path = path or model_path(config)  # a download happens here, with its progress bar
        check_model_file(self.path, config.n_gpu_layers)
        self.n_ctx = config.n_ctx
        self.start_timeout_s = start_timeout_s
        self.last_timings: dict = {}  # of the last answer: tokens reused from the KV cache (cache_n), prefilled
        self.restarts = -1
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._send_lock, self._start_lock = threading.Lock(), threading.Lock()
        self._replies: dict[int, tuple[Connection, queue.SimpleQueue]] = {}  # request id -> where it went, its replies
        self._ids = itertools.count()
        self._ensure_running()

    def _ensure_running(self) -> None:
        with self._start_lock:
            if self._process is not None and self._process.poll() is None and self._connection is not None:
                return
            if self._process is not None:
                log.warning("model process exited with status %s; starting it again", self._process.poll())
                self._stop()
            self.restarts += 1
            ours, theirs = socket.socketpair()
            with theirs:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "bot.model_process", str(theirs.fileno()), str(logging.getLogger().level)],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            connection = Connection(ours.detach())
            try:
                connection.send((self.config, self.path))
                if not connection.poll(self.start_timeout_s):
                    raise ModelError(f"the model process did not load {self.path.name} within {self.start_timeout_s:.0f} s")
                kind, info = connection.recv()
            except (EOFError, OSError):
                kind, info = "failed", (f"the model process exited with status {self._process.wait()} while loading "
                                        f"{self.path.name} (see the log above)")
            except ModelError:
                connection.close()
                self._stop()
                raise
            if kind == "failed":
                connection.close()
                self._stop()
                raise ModelError(info)
            self._connection = connection
            self.layers, self.layers_on_gpu = info["layers"], info["layers_on_gpu"]
            self._fixed, self._per_message, self._description = info["fixed"], info["per_message"], info["describe"]
            threading.Thread(target=self._read, args=(connection,), daemon=True, name="model-process").start()

    def _read(self, connection: Connection) -> None:
        """Hands each reply to the request waiting for it; when the child dies, fails them all."""
        try:
            while True:
                message = connection.recv()
                if (request := self._replies.get(message[1])) is not None:
                    request[1].put(message)
        except (EOFError, OSError):
            pass
        if self._connection is connection:
            self._connection = None
        for rid, (sent_on, replies) in list(self._replies.items()):
            if sent_on is connection:
                replies.put(("error", rid, "the model process exited; it is started again for the next question"))

    def _request(self, *message) -> tuple[int, queue.SimpleQueue]:
        self._ensure_running()
        rid, replies, connection = next(self._ids), queue.SimpleQueue(), self._connection
        self._replies[rid] = (connection, replies)
        try:
            with self._send_lock:
                connection.send((message[0], rid, *message[1:]))
        except (OSError, AttributeError):  # the child died since _ensure_running
            replies.put(("error", rid, "the model process exited; it is started again for the next question"))
        return rid, replies

    def _send(self, *message) -> None:
        try:
            with self._send_lock:
                self._connection.send(message)
        except (OSError, AttributeError):
            pass  # gone: nothing to cancel

    @functools.lru_cache(maxsize=16384)
    def count(self, text: str) -> int:
        rid, replies = self._request("count", text)
        try:
            kind, _, value = replies.get()
        finally:
            del self._replies[rid]
        if kind == "error":
            raise ModelError(value)
        return value

    def overhead(self, n_messages: int) -> int:
        return self._fixed + self._per_message * n_messages

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logit_bias: dict[int, float] | None = None) -> Iterator[str]:
        rid, replies = self._request("stream", messages, max_tokens, logit_bias)
        kind, cancelled = None, False
        try:
            while True:
                try:
                    kind, _, value = replies.get(timeout=0.05 if cancel is not None and not cancelled else None)
                except queue.Empty:
                    kind = None
                if cancel is not None and cancel.is_set() and not cancelled:
                    self._send("cancel", rid)  # the child stops at its next token and says done
                    cancelled = True
                if kind == "piece":
                    if not cancelled:
                        yield value
                elif kind == "done":
                    self.last_timings = value
                    return
                elif kind == "error":
                    raise ModelError(value)
        finally:
            # The reader stopped early (a failed post, say): the child stops at its next token.
            if kind not in ("done", "error"):
                self._send("cancel", rid)
            del self._replies[rid]

    def describe(self) -> str:
        return self._description

    def _stop(self) -> None:
        process, self._process = self._process, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # the child reads end-of-file and exits
        if process is not None and process.poll() is None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        with self._start_lock:
            self._stop()


def _serve(connection: Connection) -> None:
    from bot.llm import LocalModel

    config, path = connection.recv()
    try:
        model = LocalModel(config, path)
    except Exception as e:  # noqa: BLE001 - any reason to fail goes back to the bot, which says it
        connection.send(("failed", str(e) if isinstance(e, ModelError) else
                         f"the model process could not load {path.name}: {type(e).__name__}: {e}"))
        return
    connection.send(("ready", {"layers": model.layers, "layers_on_gpu": model.layers_on_gpu, "fixed": model.overhead(0),
                               "per_message": model.overhead(1) - model.overhead(0), "describe": model.describe()}))
    send_lock = threading.Lock()
    cancels: dict[int, threading.Event] = {}

    def send(*message) -> None:
        with send_lock:
            connection.send(message)

    def answer(rid: int, messages, max_tokens: int, logit_bias) -> None:
        try:
            for piece in model.stream(messages, max_tokens, cancels[rid], logit_bias=logit_bias):
                send("piece", rid, piece)
            send("done", rid, model.last_timings)
        except Exception as e:  # noqa: BLE001 - the bot turns it into the user's error message
            send("error", rid, str(e))
        finally:
            del cancels[rid]

    answers = ThreadPoolExecutor(1, thread_name_prefix="answer")  # one sequence: answers take turns
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return  # the bot closed its end or died
        kind, rid = message[0], message[1]
        if kind == "count":  # tokenizing reads only the vocabulary: safe beside an answer being decoded
            send("count", rid, model.count(message[2]))
        elif kind == "stream":
            cancels[rid] = threading.Event()
            answers.submit(answer, rid, *message[2:])
        elif kind == "cancel" and (event := cancels.get(rid)) is not None:
            event.set()


if __name__ == "__main__":
    fd, level = int(sys.argv[1]), int(sys.argv[2])
    logging.basicConfig(level=level or logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    _serve(Connection(fd))
    os._exit(0)  # without waiting on llama.cpp's teardown or an answer still being cancelled
