"""The sweep config: pydantic models loaded from YAML.

Every bad value is reported as one `ConfigError` naming the key, the value and what is
accepted; the CLI prints it without a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUNDLED_MODEL = "all-MiniLM-L6-v2"
GROUPS = ("same-track", "cross-track", "all")
FRESH_INIT = "adapter"


class ConfigError(ValueError):
    """A user mistake in the config: printed as one line, never as a traceback."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    name: str = BUNDLED_MODEL  # the bundled package, an HF hub id, or a local path
    adapter: Literal["bottleneck", "houlsby", "lora"] = "bottleneck"  # Pfeiffer seq_bn, double_seq_bn, LoRA q/v
    reduction_factor: int = Field(16, gt=0)  # bottleneck kinds: r = hidden / reduction_factor
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    max_length: int = Field(128, ge=8, le=512)


class DataConfig(_Section):
    dir: str = "data"  # the DVC-tracked copy the sweep reads
    source: str = "hub"  # where missing tasks are imported from: "hub" or a directory
    max_eval: int | None = Field(None, gt=0)  # cap on validation examples (recorded in the report)


class PretrainConfig(_Section):
    tasks: list[str] = Field(min_length=1)
    max_examples: int | None = Field(None, gt=0)
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-4, gt=0)
    seed: int = 0


class MergeConfig(_Section):
    groups: list[str] = Field(default_factory=lambda: ["same-track", "all"], min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["mera-avg", "mera-wts"], min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-method parameters

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, methods: list[str]) -> list[str]:
        from mera.merge import get_method  # the registry; raises MergeError with did-you-mean

        for name in methods:
            get_method(name)
        return methods

    @field_validator("groups")
    @classmethod
    def _known_groups(cls, groups: list[str]) -> list[str]:
        for g in groups:
            if g not in GROUPS:
                raise ValueError(f"unknown group {g!r}; accepted: {', '.join(GROUPS)}")
        return groups


class FewshotConfig(_Section):
    targets: list[str] = Field(min_length=1)
    inits: list[str] = Field(min_length=1)
    shots: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    epochs: int = Field(20, gt=0)
    min_steps: int = Field(100, ge=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-4, gt=0)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if any(k <= 0 for k in shots):
            raise ValueError(f"shots must be positive integers, got {shots}")
        return shots


class RunConfig(_Section):
    workers: int = Field(1, gt=0)  # concurrent units in the Prefect thread pool
    torch_threads: int | None = Field(None, gt=0)


class PathsConfig(_Section):
    """Everything a run writes; relative paths are taken from `root` (default: the cwd)."""

    root: str = "."
    artifacts: str = "artifacts"
    mlflow: str = "mlruns"
    prefect_home: str = ".prefect"
    reports: str = "reports"
    results: str = "results"

    def resolve(self, name: str) -> Path:
        root = Path(self.root).expanduser().resolve()
        value = Path(getattr(self, name)).expanduser()
        return value if value.is_absolute() else root / value


class SweepConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig
    merge: MergeConfig = MergeConfig()
    fewshot: FewshotConfig
    run: RunConfig = RunConfig()
    paths: PathsConfig = PathsConfig()

    @model_validator(mode="after")
    def _inits_are_known(self) -> "SweepConfig":
        accepted = [FRESH_INIT, *self.merge.methods]
        for init in self.fewshot.inits:
            if init not in accepted:
                raise ValueError(
                    f"fewshot.inits: unknown init {init!r}; accepted: {', '.join(accepted)} "
                    "(a merge init must also be listed in merge.methods)"
                )
        return self

    @model_validator(mode="after")
    def _merge_params_are_valid(self) -> "SweepConfig":
        from mera.merge import validate

        for name, params in self.merge.params.items():
            if not isinstance(params, dict):
                raise ValueError(f"merge.params.{name} must be a mapping of parameter: value, got {params!r}")
            try:
                validate(name, params, names=self.pretrain.tasks)
            except ValueError as exc:
                raise ValueError(f"merge.params.{name}: {str(exc).removeprefix(name + ': ')}") from None
        return self

    def data_dir(self) -> Path:
        d = Path(self.data.dir).expanduser()
        return d if d.is_absolute() else Path(self.paths.root).expanduser().resolve() / d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


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


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
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
