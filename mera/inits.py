"""How a few-shot fine-tune starts: the init registry (METHOD.md 4.5).

    head                 frozen PLM, new head only                    (AdapterFusion's "Head")
    full                 every PLM weight + head                      ("Full FT")
    adapter              a fresh Pfeiffer adapter + head               (MerA's single-adapter baseline)
    adapter-from:<task>  one pretrained source adapter + head
    best-source          the group's source adapter whose frozen features score best on a
                         K-shot dev sample (drawn from the train split, disjoint from the
                         training sample; never the validation split), then as adapter-from
    fusion               AdapterFusion over the group's adapters (frozen) + head
    <merge method>       the group's merged adapter + head             (mera-wts, ties, ...)
    frozen:<merge>       the merged adapter frozen, head only          (measures the merge itself)

Grouped inits (best-source, fusion, merges, frozen merges) exist once per merge group.
A new init kind is one `InitKind` entry here (its builder in mera.fewshot, imported when
a fine-tune starts) plus its test; the plan, keys and report read the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from mera.registry import Registry, did_you_mean


@dataclass(frozen=True)
class InitKind:
    name: str
    build: str  # "module:function" building the start model, (cfg, num_labels, seed, upstream, train, dev) -> Start
    upstream: str = "none"  # what it starts from: nothing, a source adapter, the group's merge or its adapters
    arg: str | None = None  # None: written as its name; "task" / "method": names one ("adapter-from:sst2", "ties")
    prefixed: bool = True  # with an arg: written "<kind>:<arg>" (else the arg alone: a merge method)
    lr: float | None = None  # its default lr where METHOD.md 4.5 differs from fewshot.lr (the adapter inits')
    settings: tuple[str, ...] = ()  # fewshot fields that enter its fine-tunes' keys
    weight_decay: bool = False  # trains with fewshot.weight_decay_full (else none)
    baseline: bool = False  # compared against MerA in the report's question (c)

    @property
    def grouped(self) -> bool:
        """One fine-tune per merge group (the init depends on the group's adapters)."""
        return self.upstream in ("merge", "members")


INITS: Registry[InitKind] = Registry("init kind", {k.name: k for k in (
    InitKind("head", "mera.fewshot:head_only", lr=1e-3, baseline=True),
    InitKind("full", "mera.fewshot:full_model", lr=2e-5, weight_decay=True, baseline=True),
    InitKind("adapter", "mera.fewshot:fresh_adapter", baseline=True),
    InitKind("adapter-from", "mera.fewshot:from_adapter", "source", arg="task"),
    InitKind("best-source", "mera.fewshot:best_source_adapter", "members", settings=("dev_k",), baseline=True),
    InitKind("fusion", "mera.fewshot:fusion", "members", lr=5e-5, settings=("fusion_reg",), baseline=True),
    InitKind("merge", "mera.fewshot:from_adapter", "merge", arg="method", prefixed=False),
    InitKind("frozen", "mera.fewshot:frozen_adapter", "merge", arg="method", lr=1e-3),
)})
KINDS = tuple(INITS)
DEFAULT_LR = {k.name: k.lr for k in INITS.values() if k.lr is not None}


@dataclass(frozen=True)
class Init:
    name: str  # as written in the config
    kind: str  # a key of INITS
    arg: str | None = None  # the task of adapter-from, the method of merge / frozen

    @property
    def spec(self) -> InitKind:
        return INITS[self.kind]

    @property
    def grouped(self) -> bool:
        return self.spec.grouped

    @property
    def method(self) -> str | None:
        return self.arg if self.spec.arg == "method" else None


def _spellings(kind: InitKind, methods: list[str], sources: list[str]) -> dict[str, str | None]:
    """Every name the config may write for `kind` -> its arg."""
    if kind.arg is None:
        return {kind.name: None}
    pool = methods if kind.arg == "method" else sources
    return {(f"{kind.name}:{x}" if kind.prefixed else x): x for x in pool}


def parse_init(name: str, methods: list[str], sources: list[str]) -> Init:
    """The init named `name`; merges must be listed in merge.methods, sources in pretrain.tasks."""
    known = []
    for kind in INITS.values():
        spellings = _spellings(kind, methods, sources)
        if name in spellings:
            return Init(name, kind.name, spellings[name])
        known += spellings
    raise ValueError(f"unknown init {name!r}; {did_you_mean(name, known)} "
                     "(a merge init must also be listed in merge.methods, adapter-from a task in pretrain.tasks)")
