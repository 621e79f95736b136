"""Reading a sweep config file: YAML, `${VAR}` expansion, `--set` overrides, and every
validation error as one line naming the key, the value and what is accepted."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mera.config import ConfigError, SweepConfig
from mera.registry import did_you_mean

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    """`${VAR}` / `${VAR:-default}` in string values, so one config serves CI and users."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    tree[leaf] = value


def _known_keys(loc: tuple) -> list[str]:
    """The keys accepted at a config location (for did-you-mean on an unknown key)."""
    model: Any = SweepConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            known = _known_keys(e["loc"][:-1])
            msg = f"unknown key; {did_you_mean(str(e['loc'][-1]), known)}" if known else "unknown key"
        shown = "" if e["type"] == "missing" or not e["loc"] else f" (got {e.get('input')!r})"
        lines.append(f"{where}: {msg}{shown}" if where else msg)
    return "; ".join(lines)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read, expand and validate a sweep config; `overrides` maps dotted keys to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a YAML file, e.g. configs/smoke.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return SweepConfig.model_validate(_expand_env(raw))
    except ValidationError as err:
        raise ConfigError(f"{path}: {_format_error(err)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`--set fewshot.seeds=[1,2]` -> ("fewshot.seeds", [1, 2]); values are YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(value)
