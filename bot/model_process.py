"""llama.cpp in a child process of the bot: the chat model of the `local` backend, and the guard model.

Why a process of its own: a CUDA build of llama.cpp and torch's CUDA libraries crash in one process
(measured on an H200 with CUDA 13: loading a model after torch had started CUDA was a segmentation
fault, importing torch after a model an abort), and the bot's embedder is torch. The child imports
llama.cpp and never torch, so models get every layer on the GPU beside a GPU embedder. An answer's
tokens come back one message each (microseconds, against ~4 ms a token on a GPU).

Messages, pickled tuples (the two ends are the same program):
  bot -> child:  (kind, file name, what to load) once; then ("call", id, method, args)
                 ("stream", id, messages, max_tokens, logit_bias)  ("cancel", id)
  child -> bot:  ("ready", info) or ("failed", reason) once; then ("result", id, value)  ("piece", id, text)
                 ("done", id, timings)  ("error", id, reason)
The child ends when the bot closes its end (or dies): it reads end-of-file. A child that dies is started
again for the next request.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterable, Iterator

from bot.config import ModelConfig
from bot.llm import Message, ModelError
from bot.model_files import check_model_file, model_path
from bot.safety.guard import GuardError, GuardVerdict, Stage, latency

log = logging.getLogger(__name__)

_CALLS = {"model": {"count"}, "guard": {"check"}}  # what each kind of child answers to "call"


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
                log.warning("%s process exited with status %s; starting it again", self.kind, self._process.poll())
                self._stop()
            self.restarts += 1
            ours, theirs = socket.socketpair()
            with theirs:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "bot.model_process", str(theirs.fileno()), str(logging.getLogger().level)],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    start_new_session=True)  # Ctrl-C is for the bot, which then closes the connection
            connection = Connection(ours.detach())
            try:
                connection.send((self.kind, self.name, self.spec))
                if not connection.poll(self.start_timeout_s):
                    raise self.error(f"the {self.kind} process did not load {self.name} within {self.start_timeout_s:.0f} s")
                status, info = connection.recv()
            except (EOFError, OSError):
                status, info = "failed", (f"the {self.kind} process exited with status {self._process.wait()} while "
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
                replies.put(("error", rid, f"the {self.kind} process exited; it is started again for the next request"))

    def _request(self, *message) -> tuple[int, queue.SimpleQueue]:
        self._ensure_running()
        rid, replies, connection = next(self._ids), queue.SimpleQueue(), self._connection
        self._replies[rid] = (connection, replies)
        try:
            with self._send_lock:
                connection.send((message[0], rid, *message[1:]))
        except (OSError, AttributeError):  # the child died since _ensure_running
            replies.put(("error", rid, f"the {self.kind} process exited; it is started again for the next request"))
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


def _load(kind: str, spec: tuple):
    if kind == "model":
        from bot.llm import LocalModel

        model = LocalModel(*spec)
        return model, {"layers": model.layers, "layers_on_gpu": model.layers_on_gpu, "fixed": model.overhead(0),
                       "per_message": model.overhead(1) - model.overhead(0), "describe": model.describe()}
    from bot.safety.guard import Guard

    guard = Guard(*spec)
    return guard, {"describe": guard.describe()}


def _serve(connection: Connection) -> None:
    kind, name, spec = connection.recv()
    try:
        model, info = _load(kind, spec)
    except Exception as e:  # noqa: BLE001 - any reason to fail goes back to the bot, which says it
        connection.send(("failed", str(e) if isinstance(e, (ModelError, GuardError)) else
                         f"the {kind} process could not load {name}: {type(e).__name__}: {e}"))
        return
    connection.send(("ready", info))
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
        op, rid = message[0], message[1]
        if op == "call" and message[2] in _CALLS[kind]:
            # Counting tokens reads only the vocabulary: safe beside an answer being decoded. Guard
            # checks take turns here, as they did on the guard's lock.
            try:
                send("result", rid, getattr(model, message[2])(*message[3]))
            except Exception as e:  # noqa: BLE001
                send("error", rid, str(e))
        elif op == "stream":
            cancels[rid] = threading.Event()
            answers.submit(answer, rid, *message[2:])
        elif op == "cancel" and (event := cancels.get(rid)) is not None:
            event.set()


if __name__ == "__main__":
    fd, level = int(sys.argv[1]), int(sys.argv[2])
    logging.basicConfig(level=level or logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    _serve(Connection(fd))
    os._exit(0)  # without waiting on llama.cpp's teardown or an answer still being cancelled
