"""One model, many channels: fair turns, and the model's work on its own thread.

Each request takes a Ticket for its channel. Tickets wait in a FIFO per channel; when the model has a
free slot, the next turn goes to the channel that has waited longest since its last turn (round-robin over
channels with waiting requests), so one busy channel cannot starve the others and each channel's
requests run in the order they were asked. A ticket's position (1 = next) is what the bot shows as
"you're #3 in line"; `len(scheduler)` counts running + waiting requests for /status.

`parallel` (the model's `parallel` attribute: 1 for llama.cpp in this process, the slot count of a
llama-server) turns may run at once, at most one per channel: a channel's next question must see the last
answer in its history, and its prompt then extends the one in the KV cache. The model's work runs on
`parallel` worker threads; tokens reach the event loop with call_soon_threadsafe, so the loop (and the
Discord heartbeat) never waits on the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Callable, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Ticket:
    channel: str
    running: bool = False


class Scheduler:
    def __init__(self, llm, parallel: int | None = None):
        self.llm = llm
        self.parallel = max(1, parallel or getattr(llm, "parallel", 1))
        self._thread = ThreadPoolExecutor(self.parallel, thread_name_prefix="llm")
        self._waiting: dict[str, deque[Ticket]] = {}  # rotation order: next channel to serve first
        self._running: list[Ticket] = []
        self._changed: asyncio.Future | None = None

    def __len__(self) -> int:
        return sum(map(len, self._waiting.values())) + len(self._running)

    def enter(self, channel: str) -> Ticket:
        ticket = Ticket(str(channel))
        self._waiting.setdefault(ticket.channel, deque()).append(ticket)
        self._next()
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Done (or given up): frees the model for the next turn. Safe to call twice."""
        if ticket in self._running:
            self._running.remove(ticket)
        elif ticket.channel in self._waiting and ticket in self._waiting[ticket.channel]:
            self._waiting[ticket.channel].remove(ticket)
            if not self._waiting[ticket.channel]:
                del self._waiting[ticket.channel]
        self._next()

    def position(self, ticket: Ticket) -> int:
        """0 while running, else how many turns until this one, counting itself."""
        if ticket.running:
            return 0
        queues = [list(q) for q in self._waiting.values()]
        order = 0
        for depth in range(max(map(len, queues), default=0)):
            for q in queues:
                if depth < len(q):
                    order += 1
                    if q[depth] is ticket:
                        return order
        raise ValueError("ticket is not waiting")

    async def wait_turn(self, ticket: Ticket) -> AsyncIterator[int]:
        """Yields the ticket's position each time it changes; returns when the ticket runs."""
        shown = None
        while not ticket.running:
            position = self.position(ticket)
            if position != shown:
                shown = position
                yield position
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)  # a cancelled waiter must not cancel the shared future

    def _next(self) -> None:
        while len(self._running) < self.parallel:
            busy = {t.channel for t in self._running}
            channel = next((c for c in self._waiting if c not in busy), None)
            if channel is None:
                break
            queue = self._waiting.pop(channel)
            ticket = queue.popleft()
            ticket.running = True
            self._running.append(ticket)
            if queue:
                self._waiting[channel] = queue  # back of the rotation
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking model work (tokenizing, prompt building) on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def stream(self, messages, max_tokens: int, **options) -> AsyncIterator[str]:
        """The model's answer, piece by piece; closing this generator stops the generation."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        end = object()

        def work() -> None:
            try:
                for piece in self.llm.stream(messages, max_tokens, cancel, **options):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                loop.call_soon_threadsafe(pieces.put_nowait, end)
            except BaseException as e:  # handed to the loop, raised there
                loop.call_soon_threadsafe(pieces.put_nowait, e)

        loop.run_in_executor(self._thread, work)
        try:
            while (item := await pieces.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
