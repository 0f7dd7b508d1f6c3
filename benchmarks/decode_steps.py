"""Where a generated token's time goes in the local backend: llama.cpp's decode step, the sampler, the
piece, and the loop around them, beside llama-bench decoding at the same depth. Prints a table.

    python benchmarks/decode_steps.py --model MODEL.gguf [--bin LLAMA_CPP_BUILD/bin] [--depth 1800]

Every run prefills a fresh --depth-token prompt (timed in the "decode only" runs), then generates
--tokens tokens (end-of-turn banned):
  - "decode only": llama_decode + llama_synchronize per token, the same token fed back each time
    (llama-bench's tg loop, from Python);
  - "engine's loop, timed": LocalModel._generate's per-token steps, each timed;
  - "LocalModel.stream": the engine as the bot's model child runs it, first piece to last.
BOT_MODEL_* variables set the engine's model options (e.g. BOT_MODEL_N_THREADS).
With --bin, llama-bench tg at depth 0 (the issue's reference) and at --depth, same flags as the engine.
Runs are interleaved so that clock changes hit each alike; medians of --runs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import load_config  # noqa: E402
from bot.llm import LocalModel  # noqa: E402

WORDS = ("report revenue quarter growth region cost margin board policy member staff budget plan risk "
         "market customer product service contract payment tax audit office").split()


def prompt(model: LocalModel, depth: int, run: str) -> list[dict]:
    """A system message and a question of random words, about `depth` tokens in all."""
    rng = random.Random(run)
    words: list[str] = []
    while True:
        messages = [{"role": "system", "content": f"Run {run}. You are a helpful assistant."},
                    {"role": "user", "content": " ".join(words) + " What does the report say?"}]
        missing = depth - len(model.tokenize_prompt(messages))
        if missing <= 0:
            return messages
        words += rng.choices(WORDS, k=max(8, missing // 2))


def end_of_turn_banned(model: LocalModel) -> dict[int, float]:
    import llama_cpp as lc

    return {t: -float("inf") for t in range(model.llama.n_vocab()) if lc.llama_vocab_is_eog(model._vocab, t)}


def prefill(model: LocalModel, messages: list[dict]) -> float:
    """Seconds to prefill the prompt into an empty cache."""
    import llama_cpp as lc

    tokens = model.tokenize_prompt(messages)
    model.llama.reset()
    started = time.perf_counter()
    model.llama.eval(tokens)
    lc.llama_synchronize(model.llama.ctx)
    return time.perf_counter() - started


def decode_only(model: LocalModel, messages: list[dict], tokens: int) -> tuple[float, float]:
    """Prefill seconds, then tokens/s."""
    import llama_cpp as lc

    prefilled = prefill(model, messages)
    ctx, one = model.llama.ctx, (lc.llama_token * 1)(model.llama.input_ids[model.llama.n_tokens - 1])
    started = time.perf_counter()
    for _ in range(tokens):
        lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1))
        lc.llama_synchronize(ctx)
    return prefilled, tokens / (time.perf_counter() - started)


def timed_loop(model: LocalModel, messages: list[dict], tokens: int, bias: dict) -> dict[str, float]:
    """LocalModel._generate's loop with a clock around each step: median ms per token."""
    import llama_cpp as lc

    prefill(model, messages)
    llama = model.llama
    ctx, vocab, chain = llama.ctx, model._vocab, model._sampler_chain(bias)
    one, buffer = (lc.llama_token * 1)(), ctypes.create_string_buffer(256)
    spent: dict[str, list[float]] = {"decode": [], "sample": [], "piece": [], "whole step": []}
    reused = lc.llama_perf_context(ctx).n_reused
    try:
        for _ in range(tokens):
            t0 = time.perf_counter()
            token = lc.llama_sampler_sample(chain, ctx, -1)
            t1 = time.perf_counter()
            lc.llama_vocab_is_eog(vocab, token)
            n = lc.llama_token_to_piece(vocab, token, buffer, 256, 0, False)
            buffer.raw[:n]  # the engine's copy of the piece
            t2 = time.perf_counter()
            one[0] = token
            lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1))
            lc.llama_synchronize(ctx)  # in the engine, the next sample waits for the GPU instead
            t3 = time.perf_counter()
            llama.input_ids[llama.n_tokens] = token
            llama.n_tokens += 1
            for step, seconds in (("sample", t1 - t0), ("piece", t2 - t1), ("decode", t3 - t2),
                                  ("whole step", time.perf_counter() - t0)):
                spent[step].append(1000 * seconds)
    finally:
        lc.llama_sampler_free(chain)
    medians = {step: statistics.median(values) for step, values in spent.items()}
    medians["graphs reused"] = lc.llama_perf_context(ctx).n_reused - reused  # llama.cpp built no new graph
    return medians


def streamed(model: LocalModel, messages: list[dict], tokens: int, bias: dict) -> float:
    model.llama.reset()
    first, count = None, 0
    for _ in model.stream(messages, tokens, logit_bias=bias):
        first = first or time.perf_counter()
        count += 1
    return (count - 1) / (time.perf_counter() - first)


def llama_bench(binary: Path, model: Path, depth: int, tokens: int) -> dict[int, float]:
    out = subprocess.run([str(binary / "llama-bench"), "-m", str(model), "-fa", "1", "-ngl", "99", "-p", "0",
                          "-n", str(tokens), "-d", f"0,{depth}", "-r", "3", "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    return {r["n_depth"]: r["avg_ts"] for r in json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bin", type=Path, help="llama.cpp's build/bin, for llama-bench at the same depth")
    parser.add_argument("--depth", type=int, default=1800, help="prompt tokens before the first generated one")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    env = {"BOT_MODEL_N_CTX": "8192", "BOT_MODEL_FLASH_ATTN": "true",
           **{k: v for k, v in os.environ.items() if k.startswith("BOT_MODEL_")}, "BOT_MODEL_PATH": str(args.model)}
    config = load_config(None, env=env)
    model = LocalModel(config.model)
    bias = end_of_turn_banned(model)
    decode_only(model, prompt(model, args.depth, "warm"), 16)
    rates: dict[str, list[float]] = {"decode only": [], "engine's loop, timed": [], "LocalModel.stream": []}
    steps, prefills = [], []
    for run in range(args.runs):
        prefilled, rate = decode_only(model, prompt(model, args.depth, f"d{run}"), args.tokens)
        prefills.append(1000 * prefilled)
        rates["decode only"].append(rate)
        steps.append(timed_loop(model, prompt(model, args.depth, f"t{run}"), args.tokens, bias))
        rates["engine's loop, timed"].append(1000 / steps[-1]["whole step"])
        rates["LocalModel.stream"].append(streamed(model, prompt(model, args.depth, f"s{run}"), args.tokens, bias))

    print(f"model {args.model.name}, {config.model.n_threads or os.cpu_count()} threads, {args.depth}-token prompts, "
          f"{args.tokens} tokens, {args.runs} runs")
    if args.bin:
        bench = llama_bench(args.bin, args.model, args.depth, args.tokens)
        print(f"  llama-bench tg{args.tokens}, depth 0: {bench[0]:.1f} tokens/s; depth {args.depth}: "
              f"{bench[args.depth]:.1f}")
    for name, values in rates.items():
        print(f"  {name:24} {statistics.median(values):6.1f} tokens/s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  prefill of the prompt: {', '.join(f'{ms:.1f}' for ms in prefills)} ms")
    print("  per token, median ms: " + ", ".join(
        f"{step} {statistics.median(s[step] for s in steps):.3f}" for step in steps[0] if step != "graphs reused")
          + f"; llama.cpp reused its graph for {', '.join(str(s['graphs reused']) for s in steps)} of {args.tokens} steps")


if __name__ == "__main__":
    main()
