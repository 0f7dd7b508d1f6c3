"""`python -m bot ...`: everything the bot does, from a terminal.

Every command takes --data-dir (default ./data) and --config, before or after the command name; scripts
depend on the command names, options and the --json fields below.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bot.config import Config, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, data_dir=args.data_dir)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # Library chatter (HTTP retries, model loading) is noise on a terminal unless asked for.
    for noisy in ("sentence_transformers", "httpx", "chromadb"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return args.run(config, args)
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # found while starting a part, e.g. a guard model that does not load
        print(f"configuration error: {e}", file=sys.stderr)
        return 2


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


def _add_location_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--data-dir", type=Path, default=default,
                        help="where the knowledge base and memory live (default: ./data or the config's data_dir)")
    parser.add_argument("--config", type=Path, default=default, help="TOML config file (default: ./config.toml if present)")


def _parser() -> argparse.ArgumentParser:
    # --data-dir and --config go before the command or after it; given after, they win.
    parser = argparse.ArgumentParser(prog="python -m bot", description="Discord assistant that answers from your PDFs.")
    _add_location_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _add_location_options(common, argparse.SUPPRESS)  # not given after the command: keep what came before
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", parents=[common], help="add PDFs (files or folders) to a server's knowledge base")
    p.add_argument("--guild", required=True, help="Discord server (guild) id")
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    p.set_defaults(run=_ingest)

    p = sub.add_parser("search", parents=[common], help="show the passages retrieved for a question")
    p.add_argument("--guild", required=True)
    p.add_argument("-k", type=int, default=None, help="passages per question (default: knowledge.top_k)")
    p.add_argument("--json", action="store_true", help="one JSON object per passage")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("question", nargs="?")
    group.add_argument("--queries", type=Path, help="file with one question per line")
    p.set_defaults(run=_search)

    kb = sub.add_parser("kb", help="list or remove a server's documents")
    kb_sub = kb.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = kb_sub.add_parser("list", parents=[common], help="the server's documents")
    p.add_argument("--guild", required=True)
    p.set_defaults(run=_kb_list)
    p = kb_sub.add_parser("remove", parents=[common], help="remove a document and all its passages")
    p.add_argument("--guild", required=True)
    p.add_argument("name", help="file name, as `kb list` shows it")
    p.set_defaults(run=_kb_remove)

    p = sub.add_parser("safety-eval", parents=[common], help="run the safety filter's input check over a file of prompts")
    p.add_argument("--input", required=True, type=Path, help="CSV (a column), JSONL (a field) or text (one prompt per line)")
    p.add_argument("--column", help="CSV column or JSONL field holding the prompts (default: the only one, or prompt/text/goal/...)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per prompt: {"row", "verdict": "refuse"|"answer", "category", "layer", "ms"}; '
                        "the summary line then goes to stderr")
    p.add_argument("--guild", default=None, help="use this server's safety settings (default: the config's)")
    p.add_argument("--level", choices=["off", "standard", "strict"], default=None, help="override the level")
    p.set_defaults(run=_safety_eval)

    p = sub.add_parser("console", parents=[common], help="chat in the terminal with the answer pipeline")
    p.add_argument("--guild", default="console", help="Discord server (guild) id whose documents to use")
    p.add_argument("--channel", default="console", help="channel id: whose memory and persona to use")
    p.set_defaults(run=_console)

    p = sub.add_parser("run", parents=[common], help="start the Discord bot (token from DISCORD_TOKEN or .env)")
    p.set_defaults(run=_run)
    return parser


def _knowledge_base(config: Config):
    from knowledge.base import KnowledgeBase  # heavy imports (torch, chromadb) only when needed

    return KnowledgeBase(config)


def _pdf_paths(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
            if not found:
                print(f"{path}: no PDF files in this folder", file=sys.stderr)
            files.extend(found)
        else:
            files.append(path)
    return files


def _ingest(config: Config, args) -> int:
    from tqdm import tqdm

    files = _pdf_paths(args.paths)
    if not files:
        raise UserError("nothing to ingest")
    kb = _knowledge_base(config)
    bar = tqdm(total=0, unit="page", file=sys.stderr, dynamic_ncols=True, disable=None)
    shown: dict[str, int] = {}  # file -> pages counted on the bar

    def progress(file: str, done: int, total: int) -> None:
        if file not in shown:
            shown[file] = 0
            bar.total += total
        bar.update(done - shown[file])
        shown[file] = done

    failed = 0
    for result in kb.ingest_paths(str(args.guild), files, progress):
        if result.status == "refused":
            failed += 1
            line = f"{result.file}: refused: {result.reason}"
        else:
            line = f"{result.file}: {result.status}, {result.pages} pages, {result.chunks} chunks, {result.seconds:.1f} s"
        bar.write(line, file=sys.stdout)
    bar.close()
    return 1 if failed else 0


def _search(config: Config, args) -> int:
    if args.queries:
        try:
            questions = [q.strip() for q in args.queries.read_text(encoding="utf-8-sig").splitlines() if q.strip()]
        except OSError as e:
            raise UserError(f"cannot read {args.queries}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"{args.queries} is not UTF-8 text") from None
        if not questions:
            raise UserError(f"{args.queries} holds no questions")
    else:
        questions = [args.question]
    if args.k is not None and not 1 <= args.k <= 100:
        raise UserError("-k must be between 1 and 100")
    kb = _knowledge_base(config)
    guilds = kb.guilds_with_documents()
    if str(args.guild) not in guilds:
        where = f"servers with documents: {', '.join(guilds)}" if guilds else "ingest PDFs first"
        raise UserError(f"server {args.guild} has no documents in {config.data_dir} ({where})")
    for question in questions:
        passages = kb.search(str(args.guild), question, args.k)
        if args.json:
            for rank, p in enumerate(passages, 1):
                print(json.dumps({"query": question, "rank": rank, "file": p.file, "page": p.page,
                                  "score": p.score, "text": p.text}, ensure_ascii=False))
            continue
        print(f"Q: {question}")
        if not passages:
            print("  (no passages matched)")
        for rank, p in enumerate(passages, 1):
            snippet = " ".join(p.text.split())[:160]
            print(f"  [{rank}] {p.file} p.{p.page} (score {p.score:.3f}): {snippet}")
    return 0


def _kb_list(config: Config, args) -> int:
    docs = _knowledge_base(config).documents(str(args.guild))
    if not docs:
        print("no documents")
    for d in docs:
        print(f"{d.name}\t{d.pages} pages\t{d.chunks} chunks\t{d.size_bytes / 1e6:.1f} MB")
    return 0


def _kb_remove(config: Config, args) -> int:
    removed = _knowledge_base(config).remove(str(args.guild), args.name)
    if removed is None:
        raise UserError(f"no document named {args.name!r} in this server's knowledge base")
    print(f"removed {removed.name} ({removed.chunks} chunks)")
    return 0


def _safety_eval(config: Config, args) -> int:
    import dataclasses
    import time

    import numpy as np

    from bot.safety import GuildSettings, SafetyFilter
    from bot.safety.data import InputError, read_prompts
    from bot.safety.filter import open_guard
    from bot.safety.settings import SettingsStore

    try:
        prompts = read_prompts(args.input, args.column)
    except InputError as e:
        raise UserError(str(e)) from None
    if not prompts:
        raise UserError(f"{args.input} holds no prompts")
    if args.guild is not None:
        safety = SafetyFilter.open(config)
    else:  # the config's defaults, nothing written to the data dir
        safety = SafetyFilter(config.safety, SettingsStore(Path(":memory:"), GuildSettings(config.safety.level)),
                              guard=open_guard(config))
    guild = str(args.guild or "")
    if args.level:
        safety.store.put(guild, dataclasses.replace(safety.settings(guild), level=args.level))
    safety.classifier.load()  # before the clock runs
    times, refused = [], 0
    for row, text in enumerate(prompts):
        started = time.perf_counter()
        decision = safety.judge(text, guild)
        ms = (time.perf_counter() - started) * 1000
        times.append(ms)
        refused += decision.refuse
        verdict = "refuse" if decision.refuse else "answer"
        if args.json:
            print(json.dumps({"row": row, "verdict": verdict, "category": decision.category or None,
                              "layer": decision.layer or None, "ms": round(ms, 3)}))
        else:
            print(f"{row}\t{verdict}\t{decision.category or '-'}\t{decision.layer or '-'}\t{ms:.2f} ms\t{' '.join(text.split())[:80]}")
    p50, p95 = np.percentile(times, [50, 95])
    summary = (f"refused {refused}/{len(prompts)} ({100 * refused / len(prompts):.1f}%); "
               f"latency p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    safety.close()
    return 0


def _console(config: Config, args) -> int:
    import asyncio

    from bot.console import build_pipeline, chat
    from bot.llm import ModelError
    from bot.model_files import ModelFileError

    try:
        pipeline = build_pipeline(config)
    except (ModelError, ModelFileError) as e:
        raise UserError(str(e)) from None
    try:
        asyncio.run(chat(pipeline, str(args.guild), str(args.channel)))
    finally:
        pipeline.close()
    return 0


def _run(config: Config, args) -> int:
    if not config.discord_token:
        raise UserError("DISCORD_TOKEN is not set: put the bot's token in the environment or in a .env file")
    import discord

    from bot import discord_app
    from bot.llm import ModelError
    from bot.model_files import ModelFileError

    try:
        discord_app.run(config)
    except (ModelError, ModelFileError) as e:
        raise UserError(str(e)) from None
    except discord.LoginFailure:
        raise UserError("Discord refused the token in DISCORD_TOKEN; copy it again from the Developer Portal") from None
    except discord.PrivilegedIntentsRequired:
        raise UserError("discord.message_content_intent is on, but the Message Content intent is not enabled "
                        "for this bot in the Developer Portal (Bot > Privileged Gateway Intents)") from None
    return 0
