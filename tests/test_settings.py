"""One source for every setting: the app's `[tool.flwr.app.config]` is `Settings`' defaults."""

import tomllib
from pathlib import Path

from msfusion_app.settings import Settings

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_app_config_equals_the_settings_defaults():
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    defaults = Settings().to_mapping()
    assert set(app_config) == set(defaults), set(app_config) ^ set(defaults)
    drifted = {k: (v, defaults[k]) for k, v in app_config.items() if v != defaults[k] or type(v) is not type(defaults[k])}
    assert not drifted, f"pyproject value vs Settings default: {drifted}"
