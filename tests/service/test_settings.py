"""Settings come from AFV_* environment variables (and .env), read once."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings, get_settings


def test_env_and_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFV_API_KEYS", " k1, k2 ,,")
    monkeypatch.setenv("AFV_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("AFV_BATCH_MAX_SIZE", "8")
    s = Settings()
    assert s.api_keys == ["k1", "k2"] and s.batch_max_size == 8
    from model.extract import default_run_dir

    assert s.resolved_index_dir == tmp_path / "d" / f"index-{default_run_dir().name}"  # one index per model
    assert Settings(model=Path("runs/x"), readout="pyramid-1-2").resolved_index_dir.name == "index-x-pyramid-1-2"
    assert Settings(index_dir=Path("/x")).resolved_index_dir == Path("/x")


def test_dotenv(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AFV_API_KEYS=from-dotenv\nAFV_MAX_PIXELS=1000\n")
    s = Settings()
    assert s.api_keys == ["from-dotenv"] and s.max_pixels == 1000


def test_get_settings_is_cached():
    assert get_settings() is get_settings()


def test_empty_path_settings_mean_none_not_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFV_DEMO_COLLECTION", "")
    monkeypatch.setenv("AFV_MODEL", " ")
    s = Settings()
    assert s.demo_collection is None and s.model is None


def test_precision_is_fp32_unless_set_and_only_a_known_one(monkeypatch):
    import pydantic
    import pytest

    assert Settings().precision == "fp32"
    monkeypatch.setenv("AFV_PRECISION", "bf16")
    assert Settings().precision == "bf16"
    with pytest.raises(pydantic.ValidationError, match="precision"):
        Settings(precision="bf32")
