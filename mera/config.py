"""The sweep config: pydantic models loaded from YAML.

Every bad value is reported as one `ConfigError` naming the key, the value and what is
accepted; the CLI prints it without a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mera.inits import DEFAULT_LR, Init, parse_init
from mera.inits import KINDS as INIT_KINDS
from mera.merge import get_method, validate

BUNDLED_MODEL = "all-MiniLM-L6-v2"
GROUPS = ("same-track", "cross-track", "all")


class ConfigError(ValueError):
    """A user mistake in the config: printed as one line, never as a traceback."""


class ModelError(ValueError):
    """A base model or adapter directory that cannot be used (defined here, not in
    mera.models, so checking for it does not import transformers)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Pfeiffer seq_bn, double_seq_bn, LoRA q/v; sparse / full: deltas on the base weights (mera.deltas)
AdapterKind = Literal["bottleneck", "houlsby", "lora", "sparse", "full"]
ADAPTER_KINDS = get_args(AdapterKind)


def _rates(rates: dict[str, float], known: tuple[str, ...], what: str) -> dict[str, float]:
    """A mapping of kind -> learning rate: known kinds, positive rates."""
    for kind, lr in rates.items():
        if kind not in known:
            raise ValueError(f"unknown {what} {kind!r}; accepted: {', '.join(known)}")
        if not lr > 0:
            raise ValueError(f"{kind}: lr must be positive, got {lr}")
    return rates


class ModelConfig(_Section):
    name: str = BUNDLED_MODEL  # the bundled package, an HF hub id, or a local path
    adapter: AdapterKind = "bottleneck"
    reduction_factor: int = Field(16, gt=0)  # bottleneck kinds: r = hidden / reduction_factor
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    max_length: int = Field(128, ge=8, le=512)
    # sparse: fraction of each linear weight trained (default: the count of a bottleneck
    # adapter at reduction_factor), the saliency that picks the entries, and its batches
    density: float | None = Field(None, gt=0, le=1)
    saliency: Literal["weight-grad", "grad", "random"] = "weight-grad"
    saliency_batches: int = Field(4, gt=0)

    def identity(self) -> dict:
        """What a result's key holds of the model: the sparse knobs only for sparse adapters
        (so the keys of every other kind are what they were before those knobs existed)."""
        d = self.model_dump()
        if self.adapter != "sparse":
            for k in SPARSE_KNOBS:
                d.pop(k)
        return d


SPARSE_KNOBS = ("density", "saliency", "saliency_batches")


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
        for name in methods:  # the registry raises MergeError with did-you-mean
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
    lr: float = Field(1e-4, gt=0)  # adapter inits (fresh, from a source, merged)
    lr_by_init: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_LR))  # init kind -> lr
    weight_decay_full: float = Field(0.01, ge=0)  # full fine-tuning; 0 for every other init
    dev_k: int | None = Field(None, gt=0)  # K per class of the dev sample best-source selects on (default: shots)
    fusion_reg: float = Field(0.01, ge=0)  # AdapterFusion's ‖I - V‖² weight
    # grouped init -> its groups (default: merge.groups)
    init_groups: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("lr_by_init")
    @classmethod
    def _lr_kinds(cls, lrs: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_LR, **_rates(lrs, INIT_KINDS, "init kind")}

    def lr_for(self, kind: str) -> float:
        return self.lr_by_init.get(kind, self.lr)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if any(k <= 0 for k in shots):
            raise ValueError(f"shots must be positive integers, got {shots}")
        return shots


class MultitaskConfig(_Section):
    """merge-eval, no fine-tuning: pretrain every task of pretrain.tasks as each adapter kind,
    merge groups of N of them with each method, evaluate the merged model on the group's
    tasks with their own heads (in-distribution) and on the other tasks with a head trained
    on K examples per class over the frozen merged model (held-out)."""

    kinds: list[AdapterKind] = Field(default_factory=lambda: ["bottleneck", "lora", "sparse"], min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["mera-avg", "ta", "ties"], min_length=1)
    sizes: list[int] = Field(default_factory=lambda: [2, 5, 10, 15], min_length=1)  # N tasks merged
    draws: int = Field(1, gt=0)  # random groups per N (nested: draw d's N tasks hold its smaller groups)
    seed: int = 0  # the groups' draw
    lr_by_kind: dict[str, float] = Field(default_factory=dict)  # pretraining lr per kind (default pretrain.lr)
    heldout_shots: int = Field(16, gt=0)  # K per class of a held-out task's head
    heldout_seeds: list[int] = Field(default_factory=lambda: [13], min_length=1)
    head_steps: int = Field(200, gt=0)  # head training on the frozen merged model's features
    head_lr: float = Field(1e-3, gt=0)
    head_batch_size: int = Field(8, gt=0)

    @field_validator("methods")
    @classmethod
    def _registered(cls, methods: list[str]) -> list[str]:
        return MergeConfig._registered_methods(methods)

    @field_validator("sizes")
    @classmethod
    def _at_least_two(cls, sizes: list[int]) -> list[int]:
        if any(n < 2 for n in sizes):
            raise ValueError(f"every group size merges at least 2 tasks, got {sizes}")
        return sorted(set(sizes))

    @field_validator("lr_by_kind")
    @classmethod
    def _lr_kinds(cls, lrs: dict[str, float]) -> dict[str, float]:
        return _rates(lrs, ADAPTER_KINDS, "adapter kind")


def _no_fewshot() -> FewshotConfig:
    """The fewshot section of a sweep that only runs merge-eval: no targets, nothing to fine-tune."""
    return FewshotConfig.model_construct(targets=[], inits=[], shots=[], seeds=[])


class RunConfig(_Section):
    workers: int = Field(1, gt=0)  # concurrent units
    # thread: one process, shared torch RNG (not bit-reproducible with workers > 1);
    # process: one process per worker (own RNG: identical metrics run to run)
    # dask: prefect-dask, a local cluster of `workers` processes, or the scheduler at `address`
    # unset: process when workers > 1, so every sweep is reproducible unless told otherwise
    runner: Literal["thread", "process", "dask"] = "thread"
    address: str | None = None  # dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)
    torch_threads: int | None = Field(None, gt=0)  # per worker; default cores / workers
    # where units train and evaluate: auto = CUDA when torch sees a GPU, else the CPU. Results
    # are keyed without it: a sweep resumed on another machine reuses what exists.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    eval_batch_size: int | None = Field(None, gt=0)  # default 64 on the CPU, 512 on CUDA

    @model_validator(mode="before")
    @classmethod
    def _reproducible_runner(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("runner") is None:  # absent or null
            workers = data.get("workers", 1)
            several = isinstance(workers, int) and not isinstance(workers, bool) and workers > 1
            data = {**{k: v for k, v in data.items() if k != "runner"}, **({"runner": "process"} if several else {})}
        return data


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
    fewshot: FewshotConfig  # may be left out when `multitask` is given
    multitask: MultitaskConfig | None = None
    run: RunConfig = RunConfig()
    paths: PathsConfig = PathsConfig()

    @model_validator(mode="before")
    @classmethod
    def _fewshot_or_multitask(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("multitask") is None:
            return raw
        fewshot = raw.get("fewshot")
        if fewshot is None or isinstance(fewshot, dict) and not fewshot.get("targets"):  # also as dumped
            return {**raw, "fewshot": _no_fewshot()}
        return raw

    @model_validator(mode="after")
    def _multitask_fits(self) -> SweepConfig:
        mt = self.multitask
        if mt is None:
            return self
        pool = len(self.pretrain.tasks)
        if max(mt.sizes) > pool:
            raise ValueError(f"multitask.sizes {mt.sizes}: a group of {max(mt.sizes)} tasks needs as many in "
                             f"pretrain.tasks, which has {pool}; accepted: sizes from 2 to {pool}")
        extra = sorted(set(mt.lr_by_kind) - set(mt.kinds))
        if extra:
            raise ValueError(f"multitask.lr_by_kind names {extra}, which are not in multitask.kinds {mt.kinds}")
        return self

    def kind_config(self, kind: str) -> SweepConfig:
        """This sweep as pretrained for the adapter kind `kind` of the multitask study (its lr from
        multitask.lr_by_kind): the pretraining units of each kind are keyed apart."""
        lr = self.multitask.lr_by_kind.get(kind, self.pretrain.lr) if self.multitask else self.pretrain.lr
        return self.model_copy(update={"model": self.model.model_copy(update={"adapter": kind}),
                                       "pretrain": self.pretrain.model_copy(update={"lr": lr})})

    @model_validator(mode="after")
    def _inits_are_known(self) -> SweepConfig:
        for name in self.fewshot.inits:
            try:
                parse_init(name, self.merge.methods, self.pretrain.tasks)
            except ValueError as exc:
                raise ValueError(f"fewshot.inits: {exc}") from None
        return self

    @model_validator(mode="after")
    def _inits_fit_the_adapter_kind(self) -> SweepConfig:
        if self.model.adapter in ("sparse", "full"):
            bad = [n for n in self.fewshot.inits if self.init(n).kind not in ("head", "full")]
            if bad:
                raise ValueError(f"fewshot.inits {bad} start from an adapter, but model.adapter "
                                 f"{self.model.adapter!r} trains deltas on the base weights, which few-shot "
                                 "fine-tuning does not start from yet; accepted with sparse / full: head, full")
        return self

    @model_validator(mode="after")
    def _init_groups_are_known(self) -> SweepConfig:
        for name, groups in self.fewshot.init_groups.items():
            if name not in self.fewshot.inits or not self.init(name).grouped:
                grouped = [n for n in self.fewshot.inits if self.init(n).grouped]
                raise ValueError(f"fewshot.init_groups: {name!r} is not a grouped init of fewshot.inits; "
                                 f"accepted: {', '.join(grouped) or '(none)'}")
            for g in groups:
                if g not in self.merge.groups:
                    raise ValueError(f"fewshot.init_groups.{name}: group {g!r} is not in merge.groups "
                                     f"({', '.join(self.merge.groups)})")
        return self

    def groups_of(self, init: Init) -> list[str | None]:
        if not init.grouped:
            return [None]
        return self.fewshot.init_groups.get(init.name, self.merge.groups)

    def inits(self) -> list[Init]:
        return [self.init(n) for n in self.fewshot.inits]

    def init(self, name: str) -> Init:
        return parse_init(name, self.merge.methods, self.pretrain.tasks)

    @model_validator(mode="after")
    def _merge_params_are_valid(self) -> SweepConfig:
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
