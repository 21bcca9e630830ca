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
