"""The child process of bot.model_process: holds one llama.cpp model and answers the bot's requests.

llama.cpp's libraries are loaded before anything else. On an H200 (2026-12-03), with llama.cpp's CUDA
build made on that machine, a child that imported numpy first (as the safety modules do) was killed
by a segmentation fault while loading the model, every time; one that imported llama.cpp first loaded
it every time (two runs, each checking both orders, with and without a session of its own). Crashes of
llama-cpp-python after numpy or pandas were loaded first are reported elsewhere too
(abetlen/llama-cpp-python#1581).

    python -m bot.model_child FD LOG_LEVEL      (started by bot.model_process, never by hand)
"""

import llama_cpp  # noqa: F401, I001 - first: see above

import faulthandler
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from bot.llm import ModelError
from bot.safety.guard import GuardError

_CALLS = {"model": {"count"}, "guard": {"check"}}  # what each kind of child answers to "call"


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
    faulthandler.enable()  # a crash in llama.cpp prints the Python stack that led there, into the bot's log
    fd, level = int(sys.argv[1]), int(sys.argv[2])
    logging.basicConfig(level=level or logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    _serve(Connection(fd))
    os._exit(0)  # without waiting on llama.cpp's teardown or an answer still being cancelled
