"""config/hsmkms.example.toml documents every setting, and loads as it stands."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hsmkms.settings import _FIELDS, load

CONFIG = Path(__file__).resolve().parents[2] / "config"


def commented_or_set(text: str, section: str, key: str) -> bool:
    """The key appears (set or as a commented example) inside its section's part of the file."""
    header = f"[{section}]" if section else None
    part = text if header is None else text.split(header, 1)[1] if header in text else ""
    if header is not None and "\n[" in part:
        part = part.split("\n[", 1)[0]
    return any(line.lstrip("# ").startswith(f"{key} =") for line in part.splitlines())


def test_every_setting_is_documented():
    text = (CONFIG / "hsmkms.example.toml").read_text(encoding="utf-8")
    missing = [f"[{s}] {k}" for s, k in _FIELDS if not commented_or_set(text, s, k)]
    assert not missing


def test_example_and_dev_configs_load():
    for name in ("hsmkms.example.toml", "dev.toml"):
        settings = load(CONFIG / name, environ={})
        assert settings.module == "/usr/lib/softhsm/libsofthsm2.so"
        tomllib.loads((CONFIG / name).read_text(encoding="utf-8"))
