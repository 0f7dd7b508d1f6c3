"""The answer pipeline: a question in a channel -> a streamed, sourced answer stored in memory.

    async for event in pipeline.answer(guild, channel, Author(id, name), text):
        match event:
            case Queued(position):  "you're #3 in line" (sent again whenever the position changes)
            case Piece(text):       the next piece of the answer, to append as it streams
            case Done(status, text, sources):  always last, exactly once

Done.status says what the caller got:
  "answer"   text is the whole answer; sources are the passages it cites as [n] (number, file, page)
  "refused"  the safety filter refused the question or stopped the answer; text is the refusal to post
             instead of anything streamed so far
  "invalid"  the user's input cannot be answered (empty, too long); text says why, in one line
  "error"    something broke (model, store); text is a short apology, the details are in the log
Done.text is what the message should say in the end; the cog replaces the streamed text with it.

Steps: check input (length, safety) -> wait for the channel's turn (bot.scheduler) -> retrieve (this
guild only) -> history + persona (memory; excerpts of documents removed since are left out) -> prompt
(bot.prompt) -> stream (model thread), with the safety output check every _CHECK_EVERY characters and
at the end -> store the exchange with the excerpts the model was shown, and count its texts for the next prompt.
Safety: pass an object with check_input/check_output/screen_passages (the Safety protocol; the real one
is bot.safety.SafetyFilter), or None.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import AsyncIterator, Literal, Protocol

from bot.config import Config
from bot.memory import Memory
from bot.prompt import Prompt, QuestionTooLong, Source, Turn, build, cited, count_newest
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)

_CHECK_EVERY = 400  # characters of answer between two safety output checks


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""  # the reply to post instead, when not allowed


@dataclass(frozen=True)
class Where:
    """Who asked where: per-server settings and the refusal log need it."""
    guild: str
    channel: str
    user: str


class Safety(Protocol):
    """Blocking checks (they may run a model); called off the event loop."""

    def check_input(self, text: str, where: Where) -> Verdict: ...

    def check_output(self, text: str, where: Where, question: str = "") -> Verdict:
        """The check of an answer (so far) to `question`."""

    def screen_passages(self, passages: list) -> list:
        """The retrieved passages made safe to put in the prompt (instructions in them neutralised)."""


@dataclass(frozen=True)
class Author:
    id: str
    name: str


@dataclass(frozen=True)
class Queued:
    position: int  # 1: next after the answer being written now


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    status: Literal["answer", "refused", "invalid", "error"]
    text: str
    sources: tuple[Source, ...] = ()  # cited by the answer
    passages: tuple[Source, ...] = ()  # all given to the model


Event = Queued | Piece | Done

ERROR_REPLY = "Sorry, something went wrong while answering. Please try again in a moment."
EMPTY_REPLY = "Sorry, I could not write an answer to that. Please rephrase the question."


class Pipeline:
    def __init__(self, config: Config, llm, knowledge, memory: Memory, safety: Safety | None = None):
        self.config = config
        self.llm = llm
        self.knowledge = knowledge
        self.memory = memory
        self.safety = safety
        self.scheduler = Scheduler(llm)
        self._since: dict[str, int] = {}  # channel -> the oldest exchange its last prompt showed (bot.prompt)

    @property
    def queue_length(self) -> int:
        """Requests being answered or waiting, over all channels (for /status)."""
        return len(self.scheduler)

    async def answer(self, guild: str, channel: str, author: Author, text: str) -> AsyncIterator[Event]:
        chat = self.config.chat
        question = text.strip()
        if not question:
            yield Done("invalid", "Ask me a question after the mention, e.g. \"what does the handbook say about leave?\"")
            return
        if len(question) > chat.max_question_chars:
            yield Done("invalid", f"That question is too long ({len(question)} characters; "
                                  f"at most {chat.max_question_chars}). Please shorten it.")
            return
        where = Where(str(guild), str(channel), str(author.id))
        if self.safety is not None:
            verdict = await asyncio.to_thread(self.safety.check_input, question, where)
            if not verdict.allowed:
                yield Done("refused", verdict.message)
                return

        ticket = self.scheduler.enter(channel)
        exchange_id = None
        finished = False
        try:
            async for position in self.scheduler.wait_turn(ticket):
                yield Queued(position)
            passages, (persona, history) = await asyncio.gather(  # independent: at once, off the loop
                asyncio.to_thread(self._passages, str(guild), question),
                asyncio.to_thread(self._channel_state, str(guild), str(channel)))
            try:
                prompt = await self.scheduler.run(build, self.llm, persona, passages, history, author.name, question,
                                                  chat.max_answer_tokens, self._since.get(str(channel), 0))
                self._since[str(channel)] = prompt.since
            except QuestionTooLong as e:
                finished = True
                yield Done("invalid", f"That question is too long for my context ({e.tokens} tokens; at most "
                                      f"{e.allowed} fit with room for an answer). Please shorten it.")
                return
            exchange_id = await asyncio.to_thread(self.memory.start, str(channel), author.id, author.name, question)
            answer, checked = "", 0
            async with aclosing(self.scheduler.stream(prompt.messages, prompt.max_answer_tokens)) as pieces:
                async for piece in pieces:  # leaving this block early stops the generation
                    answer += piece
                    yield Piece(piece)
                    if self.safety is not None and len(answer) - checked >= _CHECK_EVERY:
                        checked = len(answer)
                        if refusal := await self._refuse_output(answer, exchange_id, where, question):
                            finished = True
                            yield refusal
                            return
            if self.safety is not None and (refusal := await self._refuse_output(answer, exchange_id, where, question)):
                finished = True
                yield refusal
                return
            if not answer.strip():  # the model ended its turn at once
                finished = True
                await asyncio.to_thread(self.memory.finish, exchange_id, None, [], "error")
                yield Done("error", EMPTY_REPLY)
                return
            sources = tuple(cited(answer, prompt.citable))
            await asyncio.to_thread(self._save_answer, exchange_id, author.name, question, answer, sources, prompt)
            finished = True
            yield Done("answer", answer, sources, tuple(prompt.sources))
        except Exception:
            log.exception("answering in channel %s failed", channel)
            if exchange_id is not None and not finished:
                finished = True
                await asyncio.to_thread(self.memory.finish, exchange_id, None, [], "error")
            yield Done("error", ERROR_REPLY)
        finally:
            self.scheduler.leave(ticket)
            if exchange_id is not None and not finished:  # the caller stopped listening mid-answer
                await asyncio.to_thread(self.memory.finish, exchange_id, None, [], "interrupted")

    async def _refuse_output(self, answer: str, exchange_id: int, where: Where, question: str) -> Done | None:
        verdict = await asyncio.to_thread(self.safety.check_output, answer, where, question)
        if verdict.allowed:
            return None
        await asyncio.to_thread(self.memory.finish, exchange_id, None, [], "refused")
        return Done("refused", verdict.message)

    def _save_answer(self, exchange_id: int, author: str, question: str, answer: str, sources: tuple[Source, ...],
                     prompt: Prompt) -> None:
        self.memory.finish(exchange_id, answer, list(sources), "complete", prompt.excerpts)
        # The channel's next prompt shows this exchange, as memory.history will give it back. Counting its
        # texts now spares the next question that tokenizing (a few ms) on its way to the first token.
        try:
            count_newest(self.llm, [Turn(author, question, answer, tuple(prompt.excerpts))])
        except Exception:  # a head start only: the next question counts what is missing, or reports the failure
            log.debug("counting the exchange ahead of the next question failed", exc_info=True)

    def _passages(self, guild: str, question: str) -> list:
        passages = self.knowledge.search(guild, question)
        return self.safety.screen_passages(passages) if self.safety is not None else passages

    def _channel_state(self, guild: str, channel: str) -> tuple[str, list[Turn]]:
        """The persona, and the history without excerpts of documents removed (or replaced) since; its newest
        exchange counted in tokens for the prompt, meanwhile, where _save_answer has not counted it (after a
        restart, or with an excerpt left out)."""
        persona = self.memory.get_persona(channel) or self.config.chat.persona
        history = self.memory.history(channel, self.config.chat.max_history_turns)
        shown = [e.chunk_id for turn in history for e in turn.excerpts or ()]
        kept = self.knowledge.existing_chunks(guild, shown) if shown else set()
        history = [replace(turn, excerpts=tuple(e for e in turn.excerpts if e.chunk_id in kept) or None)
                   if turn.excerpts else turn for turn in history]
        count_newest(self.llm, history)
        return persona, history

    # --- persona and memory, for the slash commands (blocking calls run off the loop) -------

    async def set_persona(self, channel: str, persona: str) -> None:
        """Raises ValueError with a one-line reason for an empty or too long persona."""
        persona = persona.strip()
        limit = self.config.chat.max_persona_chars
        if not persona:
            raise ValueError("The persona is empty; write the instructions the bot should follow in this channel.")
        if len(persona) > limit:
            raise ValueError(f"The persona is too long ({len(persona)} characters; at most {limit}).")
        await asyncio.to_thread(self.memory.set_persona, str(channel), persona)

    async def persona(self, channel: str) -> tuple[str, bool]:
        """(the persona in use, whether it is the channel's own rather than the default)."""
        own = await asyncio.to_thread(self.memory.get_persona, str(channel))
        return (own, True) if own else (self.config.chat.persona, False)

    async def reset_persona(self, channel: str) -> bool:
        return await asyncio.to_thread(self.memory.reset_persona, str(channel))

    def close(self) -> None:
        self.scheduler.close()
        self.memory.close()
        if callable(close_model := getattr(self.llm, "close", None)):
            close_model()  # stops a model server the bot started
        if callable(close_safety := getattr(self.safety, "close", None)):
            close_safety()
