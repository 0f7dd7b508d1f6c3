"""llama.cpp in a child process of the bot: the chat model of the `local` backend, and the guard model.

Why a process of its own: a CUDA build of llama.cpp and torch's CUDA libraries crash in one process
(measured on an H200 with CUDA 13: loading a model after torch had started CUDA was a segmentation
fault, importing torch after a model an abort), and the bot's embedder is torch. The child
(bot.model_child) imports llama.cpp before anything else and never torch, so models get every layer on
the GPU beside a GPU embedder. An answer's tokens come back one message each (microseconds, against
~4 ms a token on a GPU).

Messages, pickled tuples:
  bot -> child:  (kind, file name, what to load) once; then ("call", id, method, args)
                 ("stream", id, messages, max_tokens, logit_bias)  ("cancel", id)
  child -> bot:  ("ready", info) or ("failed", reason) once; then ("result", id, value)  ("piece", id, text)
                 ("done", id, timings)  ("error", id, reason)
The child ends when the bot closes its end (or dies): it reads end-of-file. A child that dies is started
again for the next request.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterable, Iterator

from bot.config import ModelConfig
from bot.llm import Message, ModelError
from bot.model_files import check_model_file, model_path
from bot.safety.guard import GuardError, GuardVerdict, Stage, latency

log = logging.getLogger(__name__)


def _how_it_ended(status: int | None) -> str:
    """"was killed by SIGSEGV" for a crash, "exited with status 1" otherwise (Popen's returncode)."""
    if status is None:
        return "closed its connection"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


class ChildProcess:
    """Starts the child, sends requests, hands each reply to the request waiting for it."""

    kind = ""  # "model" or "guard"
    error: type[Exception] = ModelError  # raised when the child cannot load its model

    def __init__(self, name: str, spec: tuple, start_timeout_s: float = 600.0):
        self.name, self.spec, self.start_timeout_s = name, spec, start_timeout_s
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
                log.warning("%s process %s; starting it again", self.kind, _how_it_ended(self._process.poll()))
                self._stop()
            self.restarts += 1
            ours, theirs = socket.socketpair()
            with theirs:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "bot.model_child", str(theirs.fileno()), str(logging.getLogger().level)],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    start_new_session=True)  # Ctrl-C is for the bot, which then closes the connection
            connection = Connection(ours.detach())
            try:
                connection.send((self.kind, self.name, self.spec))
                if not connection.poll(self.start_timeout_s):
                    raise self.error(f"the {self.kind} process did not load {self.name} within {self.start_timeout_s:.0f} s")
                status, info = connection.recv()
            except (EOFError, OSError):
                status, info = "failed", (f"the {self.kind} process {_how_it_ended(self._process.wait())} while "
                                          f"loading {self.name} (see the log above)")
            except self.error:
                connection.close()
                self._stop()
                raise
            if status == "failed":
                connection.close()
                self._stop()
                raise self.error(info)
            self._connection = connection
            self._started(info)
            threading.Thread(target=self._read, args=(connection,), daemon=True, name=f"{self.kind}-process").start()

    @property
    def _gone(self) -> str:
        """What a request in flight, or sent after the child died, ends with."""
        return f"the {self.kind} process exited; it is started again for the next request"

    def _started(self, info: dict) -> None:
        """What the child said of its model once loaded."""

    def _read(self, connection: Connection) -> None:
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
                replies.put(("error", rid, self._gone))

    def _request(self, *message) -> tuple[int, queue.SimpleQueue]:
        self._ensure_running()
        rid, replies, connection = next(self._ids), queue.SimpleQueue(), self._connection
        self._replies[rid] = (connection, replies)
        try:
            with self._send_lock:
                connection.send((message[0], rid, *message[1:]))
        except (OSError, AttributeError):  # the child died since _ensure_running
            replies.put(("error", rid, self._gone))
        return rid, replies

    def _send(self, *message) -> None:
        try:
            with self._send_lock:
                self._connection.send(message)
        except (OSError, AttributeError):
            pass  # gone: nothing to cancel

    def _call(self, method: str, *args):
        rid, replies = self._request("call", method, args)
        try:
            status, _, value = replies.get()
        finally:
            del self._replies[rid]
        if status == "error":
            raise self.error(value)
        return value

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


class ProcessModel(ChildProcess):
    """The LLM protocol of bot.llm (the `local` backend), answered by LocalModel in a child process."""

    kind, parallel = "model", 1  # one llama_context, one sequence: the scheduler runs one answer at a time

    def __init__(self, config: ModelConfig, path: Path | None = None):
        self.config = config
        self.path = path or model_path(config)  # a download happens here, with its progress bar
        check_model_file(self.path, config.n_gpu_layers)
        self.n_ctx = config.n_ctx
        self.last_timings: dict = {}  # of the last answer: tokens reused from the KV cache (cache_n), prefilled
        super().__init__(self.path.name, (config, self.path))

    def _started(self, info: dict) -> None:
        self.layers, self.layers_on_gpu = info["layers"], info["layers_on_gpu"]
        self._fixed, self._per_message, self._description = info["fixed"], info["per_message"], info["describe"]

    @functools.lru_cache(maxsize=16384)
    def count(self, text: str) -> int:
        return self._call("count", text)

    def overhead(self, n_messages: int) -> int:
        return self._fixed + self._per_message * n_messages

    def stream(self, messages: list[Message], max_tokens: int, cancel: threading.Event | None = None,
               logit_bias: dict[int, float] | None = None) -> Iterator[str]:
        rid, replies = self._request("stream", messages, max_tokens, logit_bias)
        status, cancelled = None, False
        try:
            while True:
                try:
                    status, _, value = replies.get(timeout=0.05 if cancel is not None and not cancelled else None)
                except queue.Empty:
                    status = None
                if cancel is not None and cancel.is_set() and not cancelled:
                    self._send("cancel", rid)  # the child stops at its next token and says done
                    cancelled = True
                if status == "piece":
                    if not cancelled:
                        yield value
                elif status == "done":
                    self.last_timings = value
                    return
                elif status == "error":
                    raise ModelError(value)
        finally:
            # The reader stopped early (a failed post, say): the child stops at its next token.
            if status not in ("done", "error"):
                self._send("cancel", rid)
            del self._replies[rid]

    def describe(self) -> str:
        return self._description


class ProcessGuard(ChildProcess):
    """bot.safety.guard.Guard in a child process: the same check, describe and latency."""

    kind, error = "guard", GuardError

    def __init__(self, path: Path, n_gpu_layers: int = -1, n_threads: int = 0):
        self.timings: collections.deque[float] = collections.deque(maxlen=500)  # ms of the latest checks
        super().__init__(Path(path).name, (path, n_gpu_layers, n_threads))

    def _started(self, info: dict) -> None:
        self._description = info["describe"]

    def check(self, text: str, stage: Stage, categories: Iterable[str], question: str = "") -> GuardVerdict:
        """Never raises, as Guard.check: a guard that died meanwhile gives an unparsed verdict (unsafe).
        Its time counts from here: checks from several threads take turns in the child."""
        started = time.perf_counter()
        try:
            verdict = self._call("check", text, stage, list(categories), question)
        except GuardError as e:
            log.warning("guard model failed on a %s: %s", stage, e)
            verdict = GuardVerdict(False, ("unparsed",), "", 0.0)
        verdict = dataclasses.replace(verdict, ms=(time.perf_counter() - started) * 1000)
        self.timings.append(verdict.ms)
        return verdict

    def describe(self) -> str:
        return self._description

    def latency(self) -> tuple[int, float, float]:
        return latency(self.timings)
