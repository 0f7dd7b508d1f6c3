"""Prefill time of a prompt batch the first and the second time its size comes, in a fresh process: what
LocalModel.load_prefill_kernels saves (CUDA loads a kernel the first time it runs). Prints ms per size.

    python benchmarks/first_batches.py MODEL.gguf [--server LLAMA_SERVER] [--no-warm-up]

As the benchmark of 2026-12-04 on the H200: the whole model on the GPU, GGML_CUDA_MMQ_MAX_BATCH=128 as the
image sets it (unless set otherwise), two 1,800-token prompts, a 4,750-token one, then follow-ups of 29
sizes from 2 to 1,280 new tokens after it, twice over. --server: the server backend (ServerModel
starting that llama-server), timed by llama-server's own prompt_ms. --no-warm-up: either backend without
its load_prefill_kernels. On a CPU (no lazy loading) it runs as a smoke test.
"""

from __future__ import annotations

import os

os.environ.setdefault("GGML_CUDA_MMQ_MAX_BATCH", "128")  # read by llama.cpp (patches/), set before it loads

import argparse  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import llama_cpp  # noqa: E402, I001 - before numpy, as bot.model_child loads it

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import ModelConfig  # noqa: E402
from bot.llm import LocalModel, ServerModel  # noqa: E402

SIZES = [978, 1014, 991, 1083, 881, 944, 1280, 1100, 1200, 800, 700, 600, 520, 400, 300, 250, 200, 150, 129,
         128, 96, 64, 40, 32, 24, 16, 8, 4, 2]
PROMPT = 4750  # the follow-ups' batches come after a prompt this long, as a channel's history


def local_prefill(model: LocalModel):
    llama = model.llama

    def prefill_ms(prompt: list[int], reuse: int) -> float:
        llama.n_tokens = reuse  # eval drops the cache from here on; the first `reuse` tokens are the same
        started = time.perf_counter()
        llama.eval(prompt[reuse:])
        llama_cpp.llama_synchronize(llama.ctx)
        return 1000 * (time.perf_counter() - started)
    return prefill_ms


def server_prefill(model: ServerModel):
    def prefill_ms(prompt: list[int], reuse: int) -> float:
        # cache_prompt: the slot keeps the last prompt and prefills from the first token that differs
        timings = model._post_json("/completion", {"prompt": prompt, "n_predict": 1, "cache_prompt": reuse > 0,
                                                   "temperature": 0})["timings"]
        if timings["prompt_n"] != len(prompt) - reuse:
            print(f"  (llama-server prefilled {timings['prompt_n']} tokens, not {len(prompt) - reuse})")
        return timings["prompt_ms"]
    return prefill_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false")
    parser.add_argument("--server", metavar="LLAMA_SERVER", help="measure the server backend on this llama-server")
    args = parser.parse_args()
    if not args.warm_up:
        LocalModel.load_prefill_kernels = ServerModel.load_prefill_kernels = lambda self: None

    started = time.perf_counter()
    if args.server:
        model = ServerModel(ModelConfig(backend="server", server_binary=args.server, parallel=1), args.model)
        prefill_ms, what = server_prefill(model), "llama-server"
    else:
        model = LocalModel(ModelConfig(), args.model)
        prefill_ms = local_prefill(model)
        what = f"{model.layers_on_gpu} of {model.layers} layers on the GPU"
    print(f"loaded in {time.perf_counter() - started:.2f} s ({what}; load_prefill_kernels "
          f"{'on' if args.warm_up else 'off'})")
    ids = (1000 + (i * 7919) % 100_000 for i in itertools.count())  # any ids of the vocabulary, never twice
    fresh = lambda n: list(itertools.islice(ids, n))  # noqa: E731
    try:
        print("1,800-token prompts:", ", ".join(f"{prefill_ms(fresh(1800), 0):.1f}" for _ in range(2)), "ms")
        history = fresh(PROMPT)
        print(f"{PROMPT:,}-token prompt: {prefill_ms(history, 0):.1f} ms")
        rounds = [[prefill_ms(history + fresh(n), PROMPT) for n in SIZES] for _ in range(2)]
    finally:
        if args.server:
            model.close()
    print(f"{'tokens':>8} {'first ms':>9} {'second ms':>10}")
    for n, first, second in zip(SIZES, *rounds):
        print(f"{n:>8} {first:>9.1f} {second:>10.1f}")
    print(f"first minus second: at most {max(a - b for a, b in zip(*rounds)):.1f} ms")


if __name__ == "__main__":
    main()
