from bot.cli import main


def test_console_with_a_missing_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BOT_MODEL_PATH", str(tmp_path / "missing.gguf"))
    assert main(["console", "--guild", "1", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model.path") and "missing.gguf does not exist" in err


def test_console_with_a_file_that_is_not_a_model(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>rate limited</html>")
    monkeypatch.setenv("BOT_MODEL_PATH", str(fake))
    assert main(["console", "--data-dir", str(tmp_path)]) == 1
    assert "is not a GGUF model file" in capsys.readouterr().err
