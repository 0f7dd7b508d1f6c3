"""Prefill time of a prompt batch the first and the second time its size comes, in a fresh process: what
LocalModel.load_prefill_kernels saves (CUDA loads a kernel the first time it runs). Prints ms per size.

    python benchmarks/first_batches.py MODEL.gguf [--no-warm-up]

As the benchmark of 2026-12-04 on the H200: the whole model on the GPU, GGML_CUDA_MMQ_MAX_BATCH=128 as the
image sets it (unless set otherwise), two 1,800-token prompts, a 4,750-token one, then batches of 29 sizes
from 2 to 1,280 tokens right after it, twice over. --no-warm-up: LocalModel without load_prefill_kernels.
On a CPU (no lazy loading) it runs as a smoke test.
"""

from __future__ import annotations

import os

os.environ.setdefault("GGML_CUDA_MMQ_MAX_BATCH", "128")  # read by llama.cpp (patches/), set before it loads

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import llama_cpp  # noqa: E402, I001 - before numpy, as bot.model_child loads it

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import ModelConfig  # noqa: E402
from bot.llm import LocalModel  # noqa: E402

SIZES = [978, 1014, 991, 1083, 881, 944, 1280, 1100, 1200, 800, 700, 600, 520, 400, 300, 250, 200, 150, 129,
         128, 96, 64, 40, 32, 24, 16, 8, 4, 2]
PROMPT = 4750  # the follow-ups' batches come after a prompt this long, as a channel's history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false")
    args = parser.parse_args()
    if not args.warm_up:
        LocalModel.load_prefill_kernels = lambda self: None

    started = time.perf_counter()
    model = LocalModel(ModelConfig(), args.model)
    print(f"loaded in {time.perf_counter() - started:.2f} s ({model.layers_on_gpu} of {model.layers} layers on "
          f"the GPU; load_prefill_kernels {'on' if args.warm_up else 'off'})")
    llama = model.llama
    tokens = [1000 + (i * 7919) % 100_000 for i in range(PROMPT + max(SIZES))]  # any ids of the vocabulary

    def prefill_ms(start: int, n: int) -> float:
        llama.n_tokens = start  # eval drops the cache from here on
        started = time.perf_counter()
        llama.eval(tokens[start:start + n])
        llama_cpp.llama_synchronize(llama.ctx)
        return 1000 * (time.perf_counter() - started)

    print("1,800-token prompts:", ", ".join(f"{prefill_ms(0, 1800):.1f}" for _ in range(2)), "ms")
    print(f"{PROMPT:,}-token prompt: {prefill_ms(0, PROMPT):.1f} ms")
    rounds = [[prefill_ms(PROMPT, n) for n in SIZES] for _ in range(2)]
    print(f"{'tokens':>8} {'first ms':>9} {'second ms':>10}")
    for n, first, second in zip(SIZES, *rounds):
        print(f"{n:>8} {first:>9.1f} {second:>10.1f}")
    print(f"first minus second: at most {max(a - b for a, b in zip(*rounds)):.1f} ms")


if __name__ == "__main__":
    main()
