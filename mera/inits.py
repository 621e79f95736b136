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
"""

from __future__ import annotations

from dataclasses import dataclass

from mera.tasks import did_you_mean

PLAIN = ("head", "full", "adapter")
GROUPED = ("best-source", "fusion")
PREFIXES = ("adapter-from:", "frozen:")
# lr per init kind where METHOD.md 4.5 differs from fewshot.lr (the adapter inits' rate)
DEFAULT_LR = {"head": 1e-3, "frozen": 1e-3, "full": 2e-5, "fusion": 5e-5}
KINDS = ("head", "full", "adapter", "adapter-from", "best-source", "fusion", "merge", "frozen")


@dataclass(frozen=True)
class Init:
    name: str  # as written in the config
    kind: str  # one of KINDS
    arg: str | None = None  # the task of adapter-from, the method of merge / frozen

    @property
    def grouped(self) -> bool:
        """One fine-tune per merge group (the init depends on the group's adapters)."""
        return self.kind in ("best-source", "fusion", "merge", "frozen")

    @property
    def method(self) -> str | None:
        return self.arg if self.kind in ("merge", "frozen") else None


def parse_init(name: str, methods: list[str], sources: list[str]) -> Init:
    """The init named `name`; merges must be listed in merge.methods, sources in pretrain.tasks."""
    if name in PLAIN or name in GROUPED:
        return Init(name, name)
    if name in methods:
        return Init(name, "merge", name)
    prefix, _, arg = name.partition(":")
    if prefix == "adapter-from" and arg in sources:
        return Init(name, "adapter-from", arg)
    if prefix == "frozen" and arg in methods:
        return Init(name, "frozen", arg)
    known = [*PLAIN, *GROUPED, *methods, *(f"adapter-from:{s}" for s in sources), *(f"frozen:{m}" for m in methods)]
    raise ValueError(f"unknown init {name!r}; {did_you_mean(name, known)} "
                     "(a merge init must also be listed in merge.methods, adapter-from a task in pretrain.tasks)")
