"""The ``profile`` section: file values, ``OMNI_PROFILE_*`` overrides, and bad values named
by source, key and expectation like every other section."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import ConfigError, ProfileConfig, dump_config, load_config
from domain.profile import ProfileSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "omni.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_file_values_and_environment_overrides(tmp_path: Path) -> None:
    assert load_config(env={}).profile == ProfileConfig()
    path = write(tmp_path, "profile:\n  lapsed_days: 90\n  loyal_purchases: 4\n")
    config = load_config(path, env={"OMNI_PROFILE_TTL_DAYS": "30", "OMNI_PROFILE_NEW_DAYS": "7"})
    assert config.profile == ProfileConfig(
        lapsed_days=90.0, loyal_purchases=4, ttl_days=30.0, new_days=7.0
    )
    assert ProfileSettings.from_config(config.profile).lapsed_days == 90.0
    dump_config(config, tmp_path / "dumped.yaml")
    assert load_config(tmp_path / "dumped.yaml", env={}).profile == config.profile


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "profile:\n  active_days: 0\n",
            {},
            "omni.yaml: key `profile.active_days`: expected a value > 0",
        ),
        (
            "profile:\n  ttl_days: -1\n",
            {},
            "omni.yaml: key `profile.ttl_days`: expected a value > 0",
        ),
        (
            "profile:\n  loyal_purchases: 2.5\n",
            {},
            "omni.yaml: key `profile.loyal_purchases`: expected an integer",
        ),
        (
            "profile:\n  max_categories: 6\n",
            {},
            "omni.yaml: key `profile.max_categories`: expected at most 5",
        ),
        (
            "profile:\n  active_days: 60\n  lapsed_days: 45\n",
            {},
            "omni.yaml: key `profile.lapsed_days`: expected more days than `profile.active_days`",
        ),
        ("profile:\n  segments: 3\n", {}, "omni.yaml: key `profile.segments`: unknown key"),
        (
            "",
            {"OMNI_PROFILE_INTEREST_WINDOW_DAYS": "a month"},
            "environment OMNI_PROFILE_INTEREST_WINDOW_DAYS: key `profile.interest_window_days`: "
            "expected an integer",
        ),
    ],
)
def test_bad_values_name_the_source_the_key_and_the_expectation(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env=env)
    assert message in str(error.value)
