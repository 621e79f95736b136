"""The merge-method registry, without torch: every method's name, alignment, reduction and
parameters, with each parameter's accepted values declared once, so a config is validated
before anything is imported or computed (mera.merge.core runs the methods)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mera.registry import Registry


class MergeError(ValueError):
    """Unknown method, bad parameter or adapters that cannot be merged together."""


ALIGNS = ("none", "ot-wts", "ot-acts")
ANCHORS = ("largest", "medoid", "first")
AVG_OVER = ("all", "touching")
SIGN_RULES = ("total", "frequency")
TRIM_SCOPES = ("tensor", "global")
METRICS = ("euclidean", "cosine")
SOLVERS = ("emd", "sinkhorn")
FEATURES = ("in", "in+out")
CALIB_CHOICES = {"point": ("pre", "post"), "calib": ("sources", "target")}
# OT knobs read by the merge; calibration knobs read by whoever computes the activations
OT_PARAMS = ("anchor", "features", "metric", "squared", "solver", "reg", "iterations")
CALIB_PARAMS = ("point", "calib", "calib_examples", "max_tokens")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Param:
    """A parameter's accepted values: `ok(value)` and the words an error says."""

    accepted: str
    ok: Callable[[Any], bool]


def _choice(values: tuple[str, ...]) -> Param:
    return Param("one of: " + ", ".join(values), lambda v: v in values)


PARAMS: dict[str, Param] = {
    "over": _choice(AVG_OVER),
    "lam": Param("a number or null (1/N)", lambda v: v is None or _number(v)),
    "weights": Param("a list of numbers, one per adapter", lambda v: isinstance(v, list) and all(map(_number, v))),
    "density": Param("in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    "sign": _choice(SIGN_RULES),
    "trim_scope": _choice(TRIM_SCOPES),
    "p": Param("in [0, 1) (the fraction dropped)", lambda v: _number(v) and 0 <= v < 1),
    "seed": Param("an integer", _integer),
    "anchor": Param("one of: " + ", ".join(ANCHORS) + ", an index, or a member task",
                    lambda v: v in ANCHORS or _integer(v) and v >= 0 or isinstance(v, str)),
    "features": _choice(FEATURES),
    "metric": _choice(METRICS),
    "squared": Param("true or false", lambda v: isinstance(v, bool)),
    "solver": _choice(SOLVERS),
    "reg": Param("a positive number", lambda v: _number(v) and v > 0),
    "iterations": Param("an integer, at least 1", lambda v: _integer(v) and v >= 1),
    "point": _choice(CALIB_CHOICES["point"]),
    "calib": _choice(CALIB_CHOICES["calib"]),
    "calib_examples": Param("a positive integer", lambda v: _integer(v) and v > 0),
    "max_tokens": Param("a positive integer", lambda v: _integer(v) and v > 0),
}


@dataclass(frozen=True)
class Reduction:
    function: str  # "module:function", imported when a merge runs
    params: tuple[str, ...]  # its keyword arguments (tests/test_merge.py checks them against the signature)
    text: str
    checks: dict[str, Param] = field(default_factory=dict)  # where a parameter means less than in PARAMS


SCALE = {"lam": Param("a number", _number)}  # no 1/N default: TIES' λ scales the elected merge


REDUCTIONS: dict[str, Reduction] = {
    "sum": Reduction("mera.merge.reduce:reduce_sum", (), "summed"),
    "avg": Reduction("mera.merge.reduce:reduce_avg", ("over",), "averaged"),
    "ta": Reduction("mera.merge.reduce:task_arithmetic", ("lam", "weights"), "task arithmetic (lam x summed deltas)"),
    "ties": Reduction("mera.merge.reduce:ties", ("density", "sign", "lam", "trim_scope"),
                      "TIES (trim, elect sign, disjoint mean)", SCALE),
    "dare-linear": Reduction("mera.merge.reduce:dare_linear", ("p", "lam", "seed"), "DARE drop-and-rescale, summed"),
    "dare-ties": Reduction("mera.merge.reduce:dare_ties", ("p", "sign", "lam", "seed"),
                           "DARE drop-and-rescale, then TIES", SCALE),
}
REDUCERS: Registry[Callable] = Registry("reduction", {k: r.function for k, r in REDUCTIONS.items()}, MergeError,
                                        lazy=True)
ALIGN_TEXT = {"none": "", "ot-wts": "hidden units OT-aligned on weights, then ",
              "ot-acts": "hidden units OT-aligned on activations, then "}
# features shapes the weight cost; activation costs do not read it
ALIGN_PARAMS = {"none": (), "ot-wts": OT_PARAMS,
                "ot-acts": tuple(p for p in OT_PARAMS if p != "features") + CALIB_PARAMS}


@dataclass(frozen=True)
class MergeMethod:
    name: str
    align: str  # one of ALIGNS
    reduction: str  # a key of REDUCTIONS
    version: int = 1  # bump when results change: it enters the cache key

    @property
    def description(self) -> str:
        return ALIGN_TEXT[self.align] + REDUCTIONS[self.reduction].text

    @property
    def reduce(self) -> Callable:
        return REDUCERS[self.reduction]

    @property
    def reduce_params(self) -> tuple[str, ...]:
        return REDUCTIONS[self.reduction].params

    @property
    def params(self) -> tuple[str, ...]:
        return self.reduce_params + ALIGN_PARAMS[self.align]

    def check(self, param: str) -> Param:
        """What `param` accepts for this method."""
        return REDUCTIONS[self.reduction].checks.get(param) or PARAMS[param]


def _name(align: str, reduction: str) -> str:
    """MerA's four by their paper names; the rest after their reduction, prefixed by the alignment."""
    mera = {("none", "sum"): "mera-sum", ("none", "avg"): "mera-avg", ("ot-wts", "avg"): "mera-wts",
            ("ot-acts", "avg"): "mera-acts"}
    prefix = {"none": "", "ot-wts": "ot-", "ot-acts": "ot-acts-"}[align]
    return mera.get((align, reduction), prefix + reduction)


METHODS: Registry[MergeMethod] = Registry(
    "merge method", {m.name: m for m in (MergeMethod(_name(a, r), a, r) for a in ALIGNS for r in REDUCTIONS)},
    MergeError)


def get_method(name: str) -> MergeMethod:
    return METHODS[name]


def check_params(name: str, params: dict) -> None:
    """Fail on a parameter the method does not take."""
    method = get_method(name)
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        raise MergeError(f"{name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(method.params) or 'none'}")


def validate(name: str, params: dict, names: list[str] | None = None) -> None:
    """Check a method's parameters and their values before any work (`names`: the tasks
    an anchor may name or index)."""
    check_params(name, params)
    method = get_method(name)
    for key, value in params.items():
        spec = method.check(key)
        ok = spec.ok(value)
        if key == "anchor" and names is not None and value not in ANCHORS:
            ok = value in names if isinstance(value, str) else ok and value < len(names)
        if ok:
            continue
        accepted = spec.accepted + (f" ({', '.join(names)})" if key == "anchor" and names else "")
        if accepted.startswith("one of:"):
            raise MergeError(f"{name}: {key} {value!r} is not {accepted}")
        raise MergeError(f"{name}: {key} must be {accepted}, got {value!r}")


def not_applicable(kind: str, method: str) -> str | None:
    """Why `method` cannot merge adapters of `kind` (None when it can)."""
    from mera.deltas import KINDS as DELTA_KINDS

    m = get_method(method)
    if kind in DELTA_KINDS and m.align != "none":
        return f"{method} aligns adapter units; {kind} deltas have none"
    if kind == "lora" and m.align != "none" and m.reduction != "avg":
        return f"{method}: aligned LoRA factors are only averaged"
    return None
