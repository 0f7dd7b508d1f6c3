import pytest

from bot.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(tmp_path):
    config = load_config(None, env={}, data_dir=tmp_path)
    assert config.data_dir == tmp_path
    assert config.knowledge.top_k == 5
    assert config.knowledge.chroma_url == ""


def test_file_then_environment(tmp_path):
    path = write(tmp_path, "[knowledge]\ntop_k = 7\nchunk_tokens = 150\n")
    config = load_config(path, env={"BOT_KNOWLEDGE_TOP_K": "9"})
    assert config.knowledge.top_k == 9
    assert config.knowledge.chunk_tokens == 150


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    path = write(tmp_path, "[knowledge]\ntopk = 7\n")
    with pytest.raises(ConfigError, match=r"knowledge\.topk.*allowed: .*top_k"):
        load_config(path, env={})


def test_unknown_section_and_env_var(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'modle'"):
        load_config(write(tmp_path, "[modle]\nx = 1\n"), env={})
    with pytest.raises(ConfigError, match="BOT_KNOWLEDGE_TOPK"):
        load_config(None, env={"BOT_KNOWLEDGE_TOPK": "3"})


def test_choice_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: auto, cpu, cuda"):
        load_config(None, env={"BOT_KNOWLEDGE_EMBEDDING_DEVICE": "tpu"})


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ConfigError, match="knowledge.top_k = 'many' is not a valid int"):
        load_config(write(tmp_path, '[knowledge]\ntop_k = "many"\n'), env={})
    with pytest.raises(ConfigError, match="chunk_tokens must be between 32 and 240"):
        load_config(None, env={"BOT_KNOWLEDGE_CHUNK_TOKENS": "512"})
    with pytest.raises(ConfigError, match=r"embedding_batch_size must be 0 \(picked for the device\) or more"):
        load_config(None, env={"BOT_KNOWLEDGE_EMBEDDING_BATCH_SIZE": "-1"})


def test_token_only_from_environment(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('discord_token = "abc"\n')
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_config(bad, env={})
    config = load_config(None, env={"DISCORD_TOKEN": "secret-token"})
    assert config.discord_token == "secret-token"
    assert "secret-token" not in repr(config)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DISCORD_TOKEN='from-dotenv'\n")
    assert load_config(None, env={}).discord_token == "from-dotenv"


def test_invalid_toml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[knowledge\n"), env={})


def test_model_and_chat_sections(tmp_path):
    config = load_config(write(tmp_path, '[model]\nbackend = "openai"\nbase_url = "http://127.0.0.1:8080/v1"\n'
                                         '[chat]\nmax_answer_tokens = 256\n'), env={"BOT_MODEL_N_CTX": "16384"})
    assert config.model.backend == "openai" and config.model.n_ctx == 16384
    assert config.chat.max_answer_tokens == 256
    assert config.memory_path == config.data_dir / "memory.sqlite3"
    defaults = load_config(None, env={})
    assert defaults.model.n_gpu_layers == -1 and defaults.model.n_ctx == 8192
    assert defaults.model.file == "Meta-Llama-3-8B-Instruct-Q4_K_M.gguf"
    assert defaults.model.flash_attn and defaults.model.backend == "local" and defaults.model.parallel == 8
    server = load_config(None, env={"BOT_MODEL_BACKEND": "server", "BOT_MODEL_PARALLEL": "16",
                                    "BOT_MODEL_FLASH_ATTN": "false", "BOT_MODEL_KV_CACHE_TYPE": "q8_0"}).model
    assert (server.backend, server.parallel, server.flash_attn, server.kv_cache_type) == ("server", 16, False, "q8_0")


def test_model_and_chat_rules_name_the_key():
    cases = [
        ({"BOT_MODEL_BACKEND": "ollama"}, "choose one of: local, server, openai"),
        ({"BOT_MODEL_PARALLEL": "0"}, "model.parallel must be between 1 and 64"),
        ({"BOT_MODEL_KV_CACHE_TYPE": "q4_0"}, "choose one of: f16, q8_0"),
        ({"BOT_MODEL_SERVER_PORT": "70000"}, "model.server_port must be 0 (a free port) or a TCP port"),
        ({"BOT_MODEL_ROPE_SCALING": "ntk"}, "choose one of: none, linear, yarn"),
        ({"BOT_MODEL_N_CTX": "100"}, "model.n_ctx must be between 512 and 131072"),
        ({"BOT_MODEL_N_GPU_LAYERS": "-2"}, "model.n_gpu_layers must be -1"),
        ({"BOT_MODEL_BACKEND": "openai"}, "model.base_url must be an http:// or https:// URL"),
        ({"BOT_MODEL_TEMPERATURE": "3"}, "model.temperature must be between 0 and 2"),
        ({"BOT_CHAT_MAX_ANSWER_TOKENS": "5000"}, "chat.max_answer_tokens must be between 16 and half of model.n_ctx"),
        ({"BOT_CHAT_PERSONA": "  "}, "chat.persona must be non-empty"),
        ({"BOT_MODEL_DOWNLOAD": "maybe"}, "BOT_MODEL_DOWNLOAD = 'maybe' is not a valid bool"),
    ]
    for env, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, env=env)


def test_api_key_is_not_printed():
    config = load_config(None, env={"BOT_MODEL_API_KEY": "sk-secret"})
    assert config.model.api_key == "sk-secret" and "sk-secret" not in repr(config)


def test_discord_section(tmp_path):
    path = write(tmp_path, '[discord]\nedit_interval_s = 0.5\nkb_roles = ["Librarian", 1234]\nshard_count = 4\n'
                           'shard_ids = ["0", "1"]\n')
    config = load_config(path, env={"BOT_DISCORD_ALLOW_DMS": "yes", "BOT_DISCORD_COOLDOWN_S": "0"})
    d = config.discord
    assert (d.edit_interval_s, d.allow_dms, d.cooldown_s) == (0.5, True, 0.0)
    assert d.kb_roles == ("Librarian", "1234") and d.shard_ids == ("0", "1") and not d.message_content_intent
    assert load_config(None, env={"BOT_DISCORD_KB_ROLES": "Librarian, Editors"}).discord.kb_roles == ("Librarian", "Editors")


@pytest.mark.parametrize("env, message", [
    ({"BOT_DISCORD_EDIT_INTERVAL_S": "0"}, "discord.edit_interval_s must be between 0.05 and 60"),
    ({"BOT_DISCORD_COOLDOWN_S": "-1"}, "discord.cooldown_s must be 0"),
    ({"BOT_DISCORD_SHARD_COUNT": "-2"}, "discord.shard_count must be"),
    ({"BOT_DISCORD_SHARD_IDS": "0"}, "discord.shard_ids must be .*shard_count"),
    ({"BOT_DISCORD_SHARD_COUNT": "2", "BOT_DISCORD_SHARD_IDS": "2"}, "discord.shard_ids must be"),
    ({"BOT_DISCORD_ALLOW_DMS": "maybe"}, "BOT_DISCORD_ALLOW_DMS = 'maybe' is not a valid bool"),
    ({"BOT_DISCORD_TOKEN": "x"}, "unknown environment setting BOT_DISCORD_TOKEN"),
])
def test_discord_section_is_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)


def test_safety_section(tmp_path):
    config = load_config(write(tmp_path, '[safety]\nlevel = "strict"\nthreshold_standard = 0.6\n'),
                         env={"BOT_SAFETY_SCREEN_PASSAGES": "false"})
    assert (config.safety.level, config.safety.threshold_standard, config.safety.screen_passages) == ("strict", 0.6, False)
    assert load_config(None, env={}).safety.level == "standard"
    with pytest.raises(ConfigError, match="choose one of: off, standard, strict"):
        load_config(None, env={"BOT_SAFETY_LEVEL": "max"})
    with pytest.raises(ConfigError, match="safety.threshold_strict must be above 0 and at most 1"):
        load_config(write(tmp_path, "[safety]\nthreshold_strict = 1.5\n"), env={})


def test_guard_gpu_layers_are_validated():
    with pytest.raises(ConfigError, match=r"safety\.guard_n_gpu_layers must be -1 \(every layer\), 0 \(CPU only\)"):
        load_config(None, env={"BOT_SAFETY_GUARD_N_GPU_LAYERS": "-2"})
    assert load_config(None, env={"BOT_SAFETY_GUARD_N_GPU_LAYERS": "0"}).safety.guard_n_gpu_layers == 0
