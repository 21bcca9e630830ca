"""settings.toml + environment: typed values, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.base.errors import SettingsError
from engine.program.settings import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[smtp]\nport = 2525\n"), env={})
    assert s.smtp.port == 2525
    assert s.smtp.host == "127.0.0.1"
    assert s.database_url == f"sqlite:///{tmp_path / 'var/engine.db'}"
    assert s.sequences_dir == tmp_path / "sequences"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nport = 2525\n[tracking]\nsecret = "file"\n')
    env = {
        "ENGINE_SMTP_PORT": "2600",
        "ENGINE_TRACKING_SECRET": "from-env",
        "ENGINE_SCHEDULE_DAYS": "mon, tue",
        "ENGINE_TRACKING_OLD_SECRETS": "a,b",
    }
    s = load_settings(path, env=env)
    assert s.smtp.port == 2600
    assert s.tracking.secret == "from-env"
    assert s.schedule.days == ("mon", "tue")
    assert s.tracking.old_secrets == ("a", "b")


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ('[smtp]\nport = "abc"\n', {}, "smtp.port"),
        ("[smtp]\nprot = 25\n", {}, "smtp.prot"),
        ("[smpt]\nport = 25\n", {}, "smpt"),
        ('[smtp]\nsecurity = "ssl"\n', {}, "smtp.security"),
        ("", {"ENGINE_SMTP_PORT": "twenty"}, "ENGINE_SMTP_PORT"),
        ('[sender]\npostal_address = " "\n', {}, "sender.postal_address"),
        ('[sender]\nfrom_name = "A\\r\\nBcc: x@evil.example"\n', {}, "sender.from_name"),
        ('[schedule]\ntimezone = "Mars/Base"\n', {}, "schedule.timezone"),
        ('[schedule]\nhours = "17:00-09:00"\n', {}, "schedule.hours"),
        ('[schedule]\ndays = ["mon", "funday"]\n', {}, "schedule.days"),
        ('[tracking]\nbase_url = "ftp://x"\n', {}, "tracking.base_url"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, text), env=env)
    assert err.value.key == key
    assert key in str(err.value)


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(write(tmp_path, "[smtp\n"), env={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_the_shipped_settings_file_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    s = load_settings(root / "settings.toml", env={})
    assert s.sender.postal_address


def test_lists_from_the_environment_take_json_or_commas(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    s = load_settings(path, env={"ENGINE_TRACKING_OLD_SECRETS": '["x", "y,z"]'})
    assert s.tracking.old_secrets == ("x", "y,z")
    s = load_settings(path, env={"ENGINE_SCHEDULE_DAYS": "mon,tue"})
    assert s.schedule.days == ("mon", "tue")
    with pytest.raises(SettingsError, match="JSON array"):
        load_settings(path, env={"ENGINE_SCHEDULE_DAYS": '["mon"'})
    with pytest.raises(SettingsError, match="list of strings"):
        load_settings(path, env={"ENGINE_SCHEDULE_DAYS": "[1, 2]"})


@pytest.mark.parametrize(
    ("variable", "hint"),
    [("ENGINE_SMTP_PROT", "ENGINE_SMTP_PORT"), ("ENGINE_TRACKNG_SECRET", "ENGINE_TRACKING_SECRET")],
)
def test_unknown_engine_variables_are_refused(tmp_path: Path, variable: str, hint: str) -> None:
    with pytest.raises(SettingsError, match=f"did you mean {hint}") as err:
        load_settings(write(tmp_path, ""), env={variable: "2525"})
    assert err.value.key == variable
    others = {"ENGINE_SETTINGS": "", "ENGINE_NOW": "", "ENGINE_REQUIRE_POSTGRES": "1"}
    assert load_settings(write(tmp_path, ""), env=others).smtp.port == 1025


def test_a_missing_file_is_refused_unless_the_database_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absent = tmp_path / "settings.toml"
    with pytest.raises(SettingsError, match="no settings file here"):
        load_settings(None, env={}, missing_ok=False)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert not absent.exists()
    env = {"ENGINE_DATABASE_URL": url}
    assert load_settings(None, env=env, missing_ok=False).database_url == url


def test_secrets_are_in_no_repr_and_no_error(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, '[smtp]\npassword = "pw-S3CRET"\n[imap]\npassword = "imap-S3CRET"\n'),
        env={"ENGINE_TRACKING_API_TOKEN": "token-S3CRET-0123456789"},
    )
    assert "S3CRET" not in repr(s) and s.smtp.password == "pw-S3CRET"
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, "[smtp]\npassword = 12345678\n"), env={})
    assert "smtp.password" in str(err.value) and "12345678" not in str(err.value)
