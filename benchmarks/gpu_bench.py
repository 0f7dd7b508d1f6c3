"""GPU benchmark: raw llama.cpp beside this project's engine, same build, same run; prints ONE table.

Run it through benchmarks/gpu_bench.sh (it builds llama.cpp with CUDA, installs llama-cpp-python on
that build, writes the synthetic Llama-3-8B Q4_K_M model and then calls this script):

    bash benchmarks/gpu_bench.sh DIST_DIR

or directly, once those exist:

    PYTHONPATH=SITE:. LLAMA_CPP_LIB_PATH=BUILD/bin LD_LIBRARY_PATH=BUILD/bin \\
        python3 benchmarks/gpu_bench.py --model synth-llama3-8b-q4km.gguf --bin BUILD/bin \\
        [--pdfs DIR] [--embedder DIR] [--json OUT.json]

Before spending GPU time, a smoke test on a CPU machine runs every engine step (figures meaningless;
~4 minutes on 2 cores, with tests/build_llama_server.sh's llama-server):

    python benchmarks/make_synth_llama3.py VOCAB_GGUF tiny.gguf 2     # 2 layers, the Llama-3 tokenizer
    # VOCAB_GGUF: vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf of the llama-cpp-python sdist
    python benchmarks/gpu_bench.py --model tiny.gguf --bin build/llama-server/bin --only raw,server,local --device cpu

Rows (flash attention on everywhere, end-of-turn tokens banned so every answer has its full length):
- llama-bench pp512/pp2048/tg128, and llama-server -np 16 with 1 and 16 client(s) at once: the raw
  llama.cpp reference, run twice: "stock" (llama.cpp's default flags, the patches' switches unset)
  and with the engine's flags (bot.llm.server_speed_flags: -ub 2048 for 16 slots, --cache-ram 0; and
  the switches of the patches in patches/: GGML_CUDA_MMQ_MAX_BATCH=--mmq-max-batch sends prompt batches
  above that size to cuBLAS, bot.llm.server_speed_env picks each token's candidates in the graph), so
  the table shows what each change brings.
- "engine": this project's bot.pipeline.Pipeline.answer (scheduler, memory in SQLite, prompt builder,
  chat template, streaming to the event loop) on the two GPU backends: model.backend = "local"
  (llama-cpp-python in the bot's child process, native sampler loop) and model.backend = "server" (the bot
  starts llama-server itself), each beside the embedder on the GPU, as in the bot. First token is timed
  from the message reaching the pipeline.
- Retrieval on the GPU machine: the question is embedded by the project's Embedder on the GPU and
  ranked against the channel's passages in numpy, a stand-in store. With --store-data, the second
  questions retrieve from the product's own store instead (KnowledgeBase.search: Chroma, SQLite's word
  search, the document router, as in the bot; 10,000 chunks of the filings' words by default), so that
  row is measured with the product's retrieval. benchmarks/query_latency.py times the store alone.
- Ingestion: benchmarks/ingest_speed.py over the PDFs given, in its own process: the product's
  KnowledgeBase.ingest_paths end to end (PDFium and chunking in worker processes, Embedder on the GPU in
  float16, Chroma + SQLite). It needs chromadb importable (its wheels among DIST_DIR's, or in --store-site).
  With --embedder a directory holding all-MiniLM-L6-v2's config and tokenizer without weights,
  weights of the same shapes are made up (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import faulthandler
import json
import os
import random
import site
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import load_config  # noqa: E402
from bot.llm import ServerModel, server_speed_env, server_speed_flags  # noqa: E402
from bot.model_process import ProcessModel  # noqa: E402
from bot.memory import Memory  # noqa: E402
import bot.pipeline  # noqa: E402
from llama_server import start_llama_server  # noqa: E402  (benchmarks/, this script's folder)
from bot.pipeline import Author, Done, Piece, Pipeline  # noqa: E402

EOS = (128001, 128009)  # Llama-3's <|end_of_text|> and <|eot_id|>
BAN = {t: float("-inf") for t in EOS}
WORDS = ("the report revenue quarter growth customer market product service cost margin region sales team "
         "policy leave employee manager request approval budget forecast risk audit contract supplier "
         "delivery schedule project milestone review training safety office remote hours payment invoice "
         "account balance cash flow asset liability equity share price dividend tax income expense net "
         "operating segment international domestic segment loss gain fiscal year period compared increase "
         "decrease percent million billion total adjusted basis note statement section table page").split()
ROWS: list[tuple[str, str, str, str]] = []  # sections that failed: (what, reason, "", "")
FIGURES: dict[str, float] = {}
SECOND_TURNS = 5  # second questions timed per backend
SPENT: dict[str, list[float]] = {}  # seconds per answer in pipeline steps (engine_runs) and after its last piece (ask)


def row(what: str, raw: str = "", engine: str = "", target: str = "") -> None:
    ROWS.append((what, raw, engine, target))
    print(f"  {what}: raw {raw or '-'} | engine {engine or '-'} | target {target or '-'}", flush=True)


def section(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # one broken part must not cost the whole table
                traceback.print_exc()
                row(name, f"FAILED: {e.__class__.__name__}: {str(e)[:120]}")
            print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        return run
    return wrap


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


@dataclasses.dataclass(frozen=True)
class Passage:  # the fields of knowledge.base.Passage that the prompt builder reads
    file: str
    page: int
    score: float
    text: str
    chunk_id: str


class GpuKnowledge:
    """Each guild's passages, ranked by the project's Embedder on the GPU (stands in for Chroma + FTS5)."""

    def __init__(self, embedder, passages_per_guild: int = 8, top_k: int = 5, product: ProductStore | None = None):
        self.embedder, self.n, self.top_k = embedder, passages_per_guild, top_k
        self.guilds: dict[str, tuple[list[Passage], object]] = {}
        self.hidden: set[str] = set()  # chunk ids that search leaves out
        self.last: list[Passage] = []  # what the last search found
        self.product = product  # the product's store, for the second questions (--store-data)

    def add_guild(self, guild: str, words_per_passage: int, count: int | None = None) -> None:
        rng = random.Random(guild)
        passages = [Passage(f"{guild}-report.pdf", i + 1, 0.0, text(rng, words_per_passage), f"{guild}:{i}")
                    for i in range(count or self.n)]
        vectors = self.embedder.encode([p.text for p in passages])
        self.guilds[guild] = (passages, vectors)

    def existing_chunks(self, guild: str, chunk_ids: list[str]) -> set[str]:
        return {p.chunk_id for p in self.guilds[guild][0]} & set(chunk_ids)

    def search(self, guild: str, question: str, k: int | None = None) -> list[Passage]:
        passages, vectors = self.guilds[guild]
        scores = vectors @ self.embedder.encode_question(question)
        order = [i for i in scores.argsort()[::-1] if passages[i].chunk_id not in self.hidden][:k or self.top_k]
        self.last = [dataclasses.replace(passages[i], score=float(scores[i])) for i in order]
        return self.last


class ProductStore:
    """The product's KnowledgeBase (Chroma + SQLite word search, in a temp dir) filled as
    benchmarks/query_latency.py fills it: `chunks` passages of real filings' words (the product's median
    chunk in Llama-3 tokens), random vectors. With --store-data the second questions retrieve from it as
    the bot does; every channel's guild searches this one store. Passages in `hidden` are left out of
    what a search returns (it asks for that many more), so a follow-up's passages can be all new."""

    GUILD = "product-store"
    # The product's chunks of eight 10-Qs (at most 200 MiniLM word pieces) are a median 190 Llama-3 tokens
    # (p90 216, max 266); so are 145 of the filings' words in a row (130, query_latency's size: 170).
    CHUNK_WORDS = 145

    def __init__(self, embedder, data: Path, data_dir: Path, chunks: int):
        import csv

        import numpy as np
        from query_latency import corpus_words, fill  # benchmarks/, beside this script

        from knowledge.base import KnowledgeBase

        self.kb = KnowledgeBase(load_config(None, env={}, data_dir=data_dir / "product-store"), embedder=embedder)
        fill(self.kb, self.GUILD, chunks, corpus_words(data), embedder.dimension, np.random.default_rng(0),
             self.CHUNK_WORDS)
        FIGURES["product store chunks"] = self.kb.store(self.GUILD).chunk_count()
        with open(data / "qna_data.csv", encoding="utf-8-sig", newline="") as f:
            self.questions = [r["Question"] for r in csv.DictReader(f)]
        for question in self.questions[:10]:
            self.kb.search(self.GUILD, question)  # the index and SQLite's pages loaded
        self.hidden: set[str] = set()
        self.last: list = []  # what the last search found

    def search(self, guild: str, question: str, k: int | None = None) -> list:
        k = k or self.kb.config.top_k
        found = self.kb.search(self.GUILD, question, k + len(self.hidden))
        self.last = [p for p in found if p.chunk_id not in self.hidden][:k]
        return self.last

    def existing_chunks(self, guild: str, chunk_ids: list[str]) -> set[str]:
        return self.kb.existing_chunks(self.GUILD, chunk_ids)


class NoEos:
    """The model with end-of-turn banned, so every answer runs to max_tokens.

    Random weights write noise: tokens that the tokenizer would cut differently from their text, so a
    next turn could not reuse them from the KV cache as it reuses a real model's answers (text the
    tokenizer itself would produce). `prime` stands in for that: it puts the last prompt and the
    answer's text, as the tokenizer cuts it, in the KV cache, as a real model's answer leaves them."""

    def __init__(self, llm):
        self.llm, self.last_messages = llm, []

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def stream(self, messages, max_tokens, cancel=None, **options):
        self.last_messages = messages
        return self.llm.stream(messages, max_tokens, cancel, logit_bias=BAN, **options)

    def prime(self, answer: str) -> None:
        """A one-token request on the last prompt followed by `answer` as the assistant's message: the
        prompt and the answer's tokens are then in the KV cache (the slot's, for llama-server)."""
        for _ in self.llm.stream([*self.last_messages, {"role": "assistant", "content": answer}], 1):
            pass


def gpu_used_mib() -> float:
    """The whole GPU's used memory (per-process figures are often hidden inside containers); NaN without
    nvidia-smi (a smoke test on the CPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True).stdout
    except FileNotFoundError:
        return float("nan")
    return float(out.strip().splitlines()[0])


def memory_after_prompt(llm, args, base: float) -> float:
    """GPU memory (MiB above base) once the model has prefilled a ~1,800-token prompt: more than at load,
    since the first long prefill allocates cuBLAS's workspace (GGML_CUDA_MMQ_MAX_BATCH sends it there)."""
    first_token_s(llm, concurrent_prompts(1, args.words_1800)[0])
    return gpu_used_mib() - base


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


# --- raw llama.cpp ------------------------------------------------------------------------------

@section("llama-bench")
def llama_bench(args) -> None:
    out = subprocess.run([str(args.bin / "llama-bench"), "-m", str(args.model), "-fa", "1", "-ngl", "99",
                          "-p", "512,2048", "-n", "128", "-r", "3", "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=300, env=stock_env()).stdout
    for result in json.loads(out):
        name = f"pp{result['n_prompt']}" if result["n_prompt"] else f"tg{result['n_gen']}"
        FIGURES[f"llama-bench {name}"] = result["avg_ts"]
    print(f"  pp512 {FIGURES['llama-bench pp512']:,.0f}, pp2048 {FIGURES['llama-bench pp2048']:,.0f}, "
          f"tg128 {FIGURES['llama-bench tg128']:.1f} tokens/s", flush=True)


def start_raw_server(args, parallel: int, n_ctx_per_slot: int, extra: list[str], env: dict[str, str]):
    return start_llama_server([str(args.bin / "llama-server"), "-m", str(args.model), "-np", str(parallel),
                               "-c", str(parallel * n_ctx_per_slot), "--cont-batching", "-fa", "on", "-ngl", "99",
                               "--no-webui", *extra], env, timeout_s=180)


def raw_request(port: int, messages, max_tokens: int, results: list, started: float) -> None:
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                       "temperature": 0.7, "top_p": 0.95}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    first, pieces = None, 0
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            if line.startswith(b"data:") and b'"content"' in line and not line.startswith(b"data: [DONE]"):
                delta = (json.loads(line[5:])["choices"] or [{}])[0].get("delta", {})
                if delta.get("content"):
                    first = first or time.perf_counter()
                    pieces += 1
    results.append((first - started, pieces, time.perf_counter()))


def concurrent_prompts(n: int, words_per_passage: int) -> list[list[dict]]:
    """Prompts shaped like the engine's: a system message, then five sources and the question."""
    rng = random.Random(7)
    return [[{"role": "system", "content": "You are a helpful assistant for this Discord server."},
             {"role": "user", "content": "<sources>\n" + "\n\n".join(text(rng, words_per_passage) for _ in range(5))
              + f"\n</sources>\n\nAda asks: {text(rng, 12)}"}] for _ in range(n)]


def stock_env() -> dict[str, str]:
    """The environment without the patches' switches: llama.cpp exactly as it ships."""
    switches = {"GGML_CUDA_MMQ_MAX_BATCH", *server_speed_env(True)}
    return {k: v for k, v in os.environ.items() if k not in switches}


@section("llama-server -np 16")
def raw_server(args) -> None:
    """llama-server with its default flags (the reference), then with the engine's (see ServerModel.command)."""
    slots = 16  # the engine's flags are those it gives llama-server for this many slots
    tuned = server_speed_flags(load_config(None, env={}).model.n_batch, slots)
    for variant, extra, env in (("stock", [], stock_env()),
                                ("tuned", tuned, dict(stock_env(), GGML_CUDA_MMQ_MAX_BATCH=str(args.mmq_max_batch),
                                                       **server_speed_env(True)))):
        process, port = start_raw_server(args, slots, 2048 if variant == "stock" else 8192, extra, env)
        try:
            prompts = concurrent_prompts(17, args.words_1200)
            raw_request(port, prompts[16], 16, [], time.perf_counter())  # warm-up
            firsts = []
            for messages in concurrent_prompts(3, args.words_1800):
                results: list = []
                raw_request(port, messages, 16, results, time.perf_counter())
                firsts.append(results[0][0])
            FIGURES[f"raw {variant} first 1800"] = statistics.median(firsts)
            for n in (1, 16):
                results = []
                started = time.perf_counter()
                threads = [threading.Thread(target=raw_request, args=(port, prompts[i], 128, results, started)) for i in range(n)]
                [t.start() for t in threads]
                [t.join() for t in threads]
                wall = max(r[2] for r in results) - started
                FIGURES[f"raw {variant} {n} tokens/s"] = sum(r[1] for r in results) / wall
                FIGURES[f"raw {variant} {n} first p95"] = p95([r[0] for r in results])
                if n == 1:
                    FIGURES[f"raw {variant} 1 decode"] = (results[0][1] - 1) / (results[0][2] - started - results[0][0])
        finally:
            process.terminate()
            process.wait(20)


# --- the project's engine --------------------------------------------------------------------

def engine_config(args, data_dir: Path, **model):
    env = {"BOT_MODEL_PATH": str(args.model), "BOT_MODEL_N_CTX": "8192", "BOT_MODEL_FLASH_ATTN": "true",
           "BOT_MODEL_SERVER_BINARY": str(args.bin / "llama-server"), "BOT_CHAT_MAX_ANSWER_TOKENS": "256",
           "BOT_MODEL_N_THREADS": str(args.threads), "BOT_MODEL_N_GPU_LAYERS": "0" if args.device == "cpu" else "-1"}
    env.update({f"BOT_MODEL_{k.upper()}": str(v) for k, v in model.items()})
    return load_config(None, env=env, data_dir=data_dir)


async def ask(pipeline: Pipeline, guild: str, channel: str, question: str):
    """Seconds to the first piece, pieces, seconds from the first piece to the last, the answer. The
    answer's final steps after its last piece (output check, saving it) go to SPENT["finish"]."""
    started = time.perf_counter()
    first, last, pieces, answer = None, None, 0, None
    async for event in pipeline.answer(guild, channel, Author("1", "Ada"), question):
        if isinstance(event, Piece):
            last = time.perf_counter()
            first = first or last
            pieces += 1
        elif isinstance(event, Done):
            answer = event
    SPENT.setdefault("finish", []).append(time.perf_counter() - last)
    assert answer is not None and answer.status == "answer", answer
    return first - started, pieces, last - first, answer.text


def first_token_s(llm, messages) -> float:
    """Seconds to the first piece of a one-token answer; the stream is read to its end for its timings."""
    started, first = time.perf_counter(), None
    for _ in llm.stream(messages, 1):
        first = first or time.perf_counter()
    return (first or time.perf_counter()) - started


def seed_history(memory: Memory, channel: str, tokens: int, count) -> int:
    rng, total, turns = random.Random(channel), 0, 0
    while total < tokens:
        q, a = text(rng, 15), text(rng, 160)
        exchange = memory.start(channel, "1", "Ada", q)
        memory.finish(exchange, a, [])
        total += count(q) + count(a) + 10
        turns += 1
    return turns


def engine_runs(args, name: str, llm, data_dir: Path, knowledge, config, concurrent: bool) -> None:
    """Single channel first token (~1,800-token prompt) and decode (256-token answers); second turn at
    3,000 tokens of history; and, for the server backend, 16 channels at once (128-token answers)."""
    memory = Memory(data_dir / f"{name}.sqlite3")
    pipeline = Pipeline(config, NoEos(llm), knowledge, memory)

    def timed(step, fn):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                SPENT.setdefault(step, []).append(time.perf_counter() - started)
        return run

    turns = knowledge.product or knowledge  # where the second questions retrieve from
    untimed_build = bot.pipeline.build
    for store in {knowledge, turns}:
        store.search = timed("retrieval", store.search)
    bot.pipeline.build = timed("prompt", untimed_build)  # token counts included
    pipeline._channel_state = timed("history", pipeline._channel_state)  # beside retrieval: memory, token counts
    short = dataclasses.replace(config, chat=dataclasses.replace(config.chat, max_answer_tokens=128))

    async def single():
        # Warm-up (CUDA graphs, allocations), then a fresh channel and guild each time: nothing cached
        # but the system prompt.
        await ask(pipeline, "g-single-0", "warm", "What does the report say about the budget?")
        firsts, rates = [], []
        SPENT.clear()
        for i in range(1, 4):
            first, pieces, rest, _ = await ask(pipeline, f"g-single-{i}", f"single-{i}",
                                               "What does the report say about the budget for the next quarter?")
            firsts.append(first)
            rates.append((config.chat.max_answer_tokens - 1) / rest)
        FIGURES[f"{name} finish ms"] = 1000 * statistics.median(SPENT["finish"])
        return statistics.median(firsts), statistics.median(rates)

    async def second_turn():
        """Passages of the product's chunk size here (~190 Llama-3 tokens, the median of its chunks of the
        10-Qs; the ~1,800-token prompt above needs bigger ones). Before the timed question, NoEos.prime
        leaves the first answer in the KV cache as a real model's would be: the second turn then prefills
        only the new passages and question. Its passages are all new (the first question's are hidden from
        search): the most a follow-up prefills.
        With --store-data, both questions retrieve from the product's store (`turns`)."""
        results, prefilled, steps, raw = [], [], [], []
        pipeline.knowledge = turns
        for i in range(SECOND_TURNS):
            channel = f"history-{name}-{i}"
            seed_history(memory, channel, 3000, llm.count)
            _, _, _, answer = await ask(pipeline, f"g-turn-{i}", channel, "Which region had the highest growth?")
            first_prefilled, first_messages = llm.last_timings.get("prompt_n"), pipeline.llm.last_messages
            await asyncio.to_thread(pipeline.llm.prime, answer)
            turns.hidden = {p.chunk_id for p in turns.last}
            try:
                first, _, _, _ = await ask(pipeline, f"g-turn-{i}", channel, "And the lowest?")
            finally:
                turns.hidden = set()
            results.append(first)
            prefilled.append(llm.last_timings.get("prompt_n", float("nan")))
            steps.append({step: values[-1] for step, values in SPENT.items()})
            print(f"  second turn {i}: {first:.3f} s; prefilled {first_prefilled} tokens for the first question, "
                  f"{prefilled[-1]} for the second ({llm.last_timings.get('cache_n')} reused, in "
                  f"{llm.last_timings.get('prompt_ms', float('nan')):.1f} ms); retrieval "
                  f"{1000 * steps[-1]['retrieval']:.1f} ms (history beside it {1000 * steps[-1]['history']:.1f} ms), prompt "
                  f"{1000 * steps[-1]['prompt']:.1f} ms", flush=True)
            # The same prompt straight to the model, its cache primed alike: what the pipeline adds is the rest.
            second_messages, pipeline.llm.last_messages = pipeline.llm.last_messages, first_messages
            await asyncio.to_thread(pipeline.llm.prime, answer)
            raw.append(await asyncio.to_thread(first_token_s, llm, second_messages))
            print(f"  second turn {i}, same prompt straight to the model: {raw[-1]:.3f} s "
                  f"({llm.last_timings.get('prompt_n')} tokens prefilled)", flush=True)
        for step in ("retrieval", "history", "prompt"):
            FIGURES[f"{name} second turn {step} ms"] = 1000 * statistics.median(s[step] for s in steps)
        FIGURES[f"{name} second turn raw"] = statistics.median(raw)
        pipeline.knowledge = knowledge
        return statistics.median(results), statistics.median(prefilled)

    async def many(n: int):
        pipeline.config = short
        guilds = [f"g-many-{i}" for i in range(n)]
        await asyncio.gather(*(ask(pipeline, g, f"warm-{g}", "Warm up?") for g in guilds))
        started = time.perf_counter()
        SPENT.clear()
        results = await asyncio.gather(*(ask(pipeline, g, f"many-{g}", "What does the report say about costs?")
                                         for g in guilds))
        for step, values in SPENT.items():
            print(f"  16 channels, {step}: median {1000 * statistics.median(values):.0f} ms, max {1000 * max(values):.0f} ms", flush=True)
        print("  16 channels, first tokens:", " ".join(f"{r[0]:.2f}" for r in sorted(results)), flush=True)
        wall = time.perf_counter() - started
        tokens = n * short.chat.max_answer_tokens
        return tokens / wall, p95([r[0] for r in results]), min(r[1] for r in results), max(r[0] for r in results)

    try:
        for i in range(4):
            knowledge.add_guild(f"g-single-{i}", args.words_1800)
        if turns is knowledge:
            for i in range(SECOND_TURNS):
                knowledge.add_guild(f"g-turn-{i}", args.words_chunk, count=10)
        first, rate = asyncio.run(single())
        FIGURES[f"{name} first"], FIGURES[f"{name} decode"] = first, rate
        FIGURES[f"{name} second turn"], FIGURES[f"{name} second turn prefilled"] = asyncio.run(second_turn())
        if concurrent:
            for i in range(16):
                knowledge.add_guild(f"g-many-{i}", args.words_1200)
            total, first_p95, fewest, slowest = asyncio.run(many(16))
            FIGURES[f"{name} 16 tokens/s"], FIGURES[f"{name} 16 first p95"] = total, first_p95
            FIGURES[f"{name} 16 fewest pieces"], FIGURES[f"{name} 16 slowest first"] = fewest, slowest
    finally:
        pipeline.scheduler.close()
        memory.close()
        for store in {knowledge, turns}:
            del store.search  # the class's own again, for the next backend
        bot.pipeline.build = untimed_build


@section("engine, model.backend = server")
def engine_server(args, data_dir: Path, knowledge) -> None:
    base = gpu_used_mib()
    one = ServerModel(engine_config(args, data_dir, backend="server", parallel=1).model)
    try:
        FIGURES["server memory np1 c8192"] = gpu_used_mib() - base
        FIGURES["server memory np1 c8192 prompted"] = memory_after_prompt(one, args, base)
    finally:
        one.close()
    time.sleep(2)
    base = gpu_used_mib()
    config = engine_config(args, data_dir, backend="server", parallel=16)
    llm = ServerModel(config.model)
    try:
        FIGURES["server memory np16 c8192"] = gpu_used_mib() - base
        engine_runs(args, "server", llm, data_dir, knowledge, config, concurrent=True)
    finally:
        llm.close()


@section("engine, model.backend = local")
def engine_local(args, data_dir: Path, knowledge) -> None:
    """llama.cpp in the bot's child process (bot.model_process), the embedder on the GPU in this one."""
    config = engine_config(args, data_dir, backend="local")  # on a GPU, 1280-token prompt batches
    before = gpu_used_mib()
    llm = ProcessModel(config.model)
    try:
        FIGURES["local memory c8192"] = gpu_used_mib() - before
        FIGURES["local memory c8192 prompted"] = memory_after_prompt(llm, args, before)
        engine_runs(args, "local", llm, data_dir, knowledge, config, concurrent=False)
    finally:
        llm.close()


@section("embedding on the GPU (ingestion)")
def ingestion(args, embedder) -> None:
    """benchmarks/ingest_speed.py in its own process (ingestion workers import the main module again, and
    this one's imports would slow each of them): KnowledgeBase.ingest_paths end to end into a fresh
    knowledge base, PDFium and chunking in worker processes, embedding on the GPU, Chroma + SQLite."""
    if not args.pdfs:
        row("ingestion", "no PDFs given (--pdfs)")
        return
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-ingest-")) / "ingest.json"
    command = [sys.executable, str(Path(__file__).with_name("ingest_speed.py")), str(args.pdfs), "--device", args.device,
               "--embedder", embedder.model_name, "--json", str(out)]
    if args.store_site:
        command += ["--site", str(args.store_site)]
    status = subprocess.run(command).returncode
    if status != 0 or not out.exists():  # e.g. chromadb's wheels were not brought along
        row("ingestion", f"FAILED: exit status {status} (see the log above)")
        return
    figures = json.loads(out.read_text())
    FIGURES.update({"ingest pages/s": figures["pages"] / figures["seconds"],
                    "ingest chunks/s": figures["chunks"] / figures["seconds"],
                    "ingest embed chunks/s": figures["chunks"] / figures["embed"],
                    "ingest store chunks/s": figures["chunks"] / figures["store"],
                    **{f"ingest {key}": figures[key] for key in ("pages", "chunks", "files", "workers")}})


def make_embedder(args):
    from knowledge.embeddings import DEFAULT_MODEL, Embedder

    name = DEFAULT_MODEL
    if args.embedder:
        weights = args.embedder / "model.safetensors"
        if not weights.exists():  # same shapes, made-up values: the speed is the same
            from transformers import AutoConfig, AutoModel

            AutoModel.from_config(AutoConfig.from_pretrained(args.embedder)).save_pretrained(args.embedder)
        name = str(args.embedder)
    return Embedder(name, device=args.device)


def product_store(args, embedder, data_dir: Path) -> ProductStore | None:
    print("== the product's store", flush=True)
    if args.store_site:
        site.addsitedir(str(args.store_site))  # after site-packages: the machine's torch and numpy stay first
    try:
        return ProductStore(embedder, args.store_data, data_dir, args.store_chunks)
    except Exception as e:  # chromadb missing, say: the rest of the table still runs
        traceback.print_exc()
        row("the product's store", f"FAILED: {e.__class__.__name__}: {str(e)[:120]}")
        return None


def question_embedding_ms(embedder) -> None:
    """A question embedded on the GPU, nothing else running: what retrieval costs at the least. Beside it,
    the same questions through the model's own encode (no CUDA graphs), and how far the vectors differ."""
    questions = [f"What does the report say about the budget for quarter {i}?" + " And the year before?" * (i % 12)
                 for i in range(24)]  # 14 to ~70 word pieces: graphs of 4 lengths, captured in the first round
    times, eager_times, cosines = [], [], []
    for question in questions * 2:
        started = time.perf_counter()
        vector = embedder.encode_question(question)
        times.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        eager = embedder.encode([question])[0]
        eager_times.append(1000 * (time.perf_counter() - started))
        cosines.append(float(vector @ eager))
    FIGURES["question embedding ms"] = statistics.median(times[len(questions):])
    FIGURES["question embedding eager ms"] = statistics.median(eager_times[len(questions):])
    FIGURES["question embedding cosine min"] = min(cosines)
    print(f"  a question embedded alone: median {FIGURES['question embedding ms']:.2f} ms; through the model's own "
          f"encode {FIGURES['question embedding eager ms']:.2f} ms; vectors agree to a cosine of {min(cosines):.5f} "
          "at least", flush=True)


def table(args) -> str:
    f = FIGURES.get

    def fmt(key, spec, unit=""):
        return f"{format(f(key), spec)}{unit}" if f(key) is not None else "n/a"

    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        gpu = "no NVIDIA GPU"
    lines = [f"GPU benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {gpu}; "
             f"model {args.model.name} (Llama-3-8B-Instruct Q4_K_M shapes); flash attention on", "",
             "| what | raw llama.cpp | this project's engine | target |", "|---|---|---|---|"]
    for what, raw, engine, target in ROWS:
        lines.append(f"| {what} | {raw} | {engine} | {target} |")
    add = lambda *cells: lines.append("| " + " | ".join(cells) + " |")  # noqa: E731
    add("llama-bench pp512 / pp2048, prefill tokens/s", f"{fmt('llama-bench pp512', ',.0f')} / {fmt('llama-bench pp2048', ',.0f')}", "", "")
    add("llama-bench tg128, decode tokens/s", fmt("llama-bench tg128", ".1f"), "", "")
    add("one channel, ~1,800-token prompt: message to first token (s)",
        f"llama-server 1 client, stock {fmt('raw stock first 1800', '.3f')} / engine's flags {fmt('raw tuned first 1800', '.3f')} "
        "(no retrieval)",
        f"server {fmt('server first', '.3f')} / local {fmt('local first', '.3f')} (retrieval included)", "<= 0.25")
    add("one channel, decode tokens/s seen by the user",
        f"llama-server 1 client, stock {fmt('raw stock 1 decode', '.1f')} / engine's flags {fmt('raw tuned 1 decode', '.1f')}",
        f"server {fmt('server decode', '.1f')} / local {fmt('local decode', '.1f')} (first piece to last; the answer "
        f"checked and saved {fmt('server finish ms', '.1f')} / {fmt('local finish ms', '.1f')} ms after it)", ">= 240")
    add("16 channels at once, ~1,200-token prompts, 128-token answers: tokens/s in total",
        f"llama-server -np 16, stock {fmt('raw stock 16 tokens/s', '.0f')} (first token p95 {fmt('raw stock 16 first p95', '.2f')} s) "
        f"/ engine's flags {fmt('raw tuned 16 tokens/s', '.0f')} (p95 {fmt('raw tuned 16 first p95', '.2f')} s)",
        f"server backend: {fmt('server 16 tokens/s', '.0f')}", ">= 500")
    add("16 channels: first token p95 / slowest (s); fewest pieces streamed to one channel", "",
        f"{fmt('server 16 first p95', '.2f')} / {fmt('server 16 slowest first', '.2f')}; {fmt('server 16 fewest pieces', '.0f')} of 128",
        "<= 1.5; none starved")
    store = (f"the product's store (Chroma + SQLite, {f('product store chunks'):,.0f} chunks of the filings)"
             if f("product store chunks") else "a stand-in store")
    add(f"second question in a channel, 3,000 tokens of history, 5 new passages of the product's chunk size from {store}: "
        "first token (s)",
        f"the same prompt sent to the model directly: server {fmt('server second turn raw', '.3f')} / local "
        f"{fmt('local second turn raw', '.3f')}",
        f"server {fmt('server second turn', '.3f')} ({fmt('server second turn prefilled', '.0f')} new tokens prefilled; "
        f"retrieval {fmt('server second turn retrieval ms', '.0f')} ms, prompt {fmt('server second turn prompt ms', '.0f')} ms) "
        f"/ local {fmt('local second turn', '.3f')} (retrieval {fmt('local second turn retrieval ms', '.0f')} ms, prompt "
        f"{fmt('local second turn prompt ms', '.0f')} ms)", "<= 0.1")
    add("GPU memory, model + 8k context, one sequence (MiB)", "",
        f"local {fmt('local memory c8192', ',.0f')} / llama-server -np 1 {fmt('server memory np1 c8192', ',.0f')} at load; "
        f"{fmt('local memory c8192 prompted', ',.0f')} / {fmt('server memory np1 c8192 prompted', ',.0f')} after a "
        "~1,800-token prompt", "<= 6,656 (6.5 GB)")
    if f("server memory np16 c8192") and f("server memory np1 c8192"):
        extra = (f("server memory np16 c8192") - f("server memory np1 c8192")) / 15
        add("each extra parallel 8k sequence (llama-server -np 16 vs -np 1)", "",
            f"{extra:,.0f} MiB ({fmt('server memory np16 c8192', ',.0f')} MiB at -np 16)", "report")
    add("ingestion, end to end: PDFium + chunking in workers, embedding on the GPU, storing in Chroma + SQLite", "",
        f"{fmt('ingest pages/s', '.1f')} pages/s, {fmt('ingest chunks/s', '.0f')} chunks/s ({fmt('ingest pages', '.0f')} pages, "
        f"{fmt('ingest chunks', '.0f')} chunks, {fmt('ingest files', '.0f')} files, {fmt('ingest workers', '.0f')} workers); "
        f"embedding {fmt('ingest embed chunks/s', ',.0f')} chunks/s, storing {fmt('ingest store chunks/s', ',.0f')} chunks/s",
        ">= 100 pages/s (#2)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bin", type=Path, required=True, help="llama.cpp's build/bin (llama-bench, llama-server)")
    parser.add_argument("--pdfs", type=Path)
    parser.add_argument("--embedder", type=Path, help="a sentence-transformers model directory (default: packaged MiniLM)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--store-data", dest="store_data", type=Path,
                        help="query_latency.py's --data (docs/*.pdf, qna_data.csv): the second questions retrieve "
                        "from the product's store (Chroma + SQLite; needs chromadb) filled from it")
    parser.add_argument("--store-chunks", dest="store_chunks", type=int, default=10_000)
    parser.add_argument("--store-site", dest="store_site", type=Path,
                        help="a folder of packages for --store-data and the ingestion row (chromadb's), searched "
                        "after the machine's own")
    parser.add_argument("--only", default="bench,raw,server,local,ingest")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script on the CPU (the embedder "
                        "and the engine there; with the tiny model of make_synth_llama3.py MODEL 2)")
    parser.add_argument("--threads", type=int, default=0, help="model.n_threads for the engine (0: the product's default)")
    parser.add_argument("--mmq-max-batch", dest="mmq_max_batch", type=int, default=128,
                        help="GGML_CUDA_MMQ_MAX_BATCH for the engine (patches/llama-cpp-mmq-max-batch.patch)")
    # Words per passage that make ~1,800-token (one channel) and ~1,200-token (16 channels) prompts
    # of 5 passages with the Llama-3 tokenizer.
    parser.add_argument("--words-1800", dest="words_1800", type=int, default=330)
    parser.add_argument("--words-1200", dest="words_1200", type=int, default=210)
    # ~200 word pieces for the embedder: knowledge.chunk_tokens, the largest chunk the product stores
    parser.add_argument("--words-chunk", dest="words_chunk", type=int, default=190)
    args = parser.parse_args()
    faulthandler.enable()  # a crash in llama.cpp or CUDA prints the Python stack that led there
    os.environ["GGML_CUDA_MMQ_MAX_BATCH"] = str(args.mmq_max_batch)  # the engine's llama.cpp (and its llama-server)
    only = set(args.only.split(","))
    data_dir = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    embedder = make_embedder(args)
    embedder.encode(["load the embedder before the clock starts"])
    question_embedding_ms(embedder)
    if "bench" in only:
        llama_bench(args)
    if "raw" in only:
        raw_server(args)
    product = product_store(args, embedder, data_dir) if args.store_data and only & {"server", "local"} else None
    if "server" in only:
        engine_server(args, data_dir, GpuKnowledge(embedder, product=product))
    if "local" in only:
        engine_local(args, data_dir, GpuKnowledge(embedder, product=product))
    if "ingest" in only:
        ingestion(args, embedder)
    print(json.dumps(FIGURES, indent=1))
    if args.json:
        args.json.write_text(json.dumps(FIGURES, indent=1))
    print()
    print(table(args))


if __name__ == "__main__":
    main()
