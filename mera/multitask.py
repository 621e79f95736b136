"""merge-eval: one multi-task model from N source adapters, no fine-tuning.

The N adapters (one kind: bottleneck, LoRA, sparse or full delta) are merged into one; the
merged model is evaluated on every task of the pool on the same capped validation rows as
the adapters' own pretraining evaluation:

- in-distribution (a task of the group): with that task's own head, saved beside its adapter;
- held-out (a task outside it): with a head trained on K examples per class over the frozen
  merged model (a linear probe through the library's classification head).

Both read the same features, the merged model's last-layer first-token state in eval mode
(what adapters' ClassificationHead reads), so each task's rows pass through the encoder once.
Normalised accuracy = merged accuracy / the task's own unmerged adapter's accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mera.merge import get_method

DELTA_KINDS = ("sparse", "full")


def groups(tasks: list[str], sizes: list[int], draws: int, seed: int) -> list[tuple[int, int, list[str]]]:
    """(N, draw, members) for every size and draw: draw d is one seeded order of the tasks and
    its group of N is the first N of that order, so a draw's groups are nested (the curve over
    N adds tasks, it does not swap them). A size that holds the whole pool is drawn once."""
    out = []
    for d in range(draws):
        order = sorted(tasks)
        random.Random(f"{seed}-{d}").shuffle(order)
        for n in sizes:
            if n == len(tasks) and d > 0:
                continue
            out.append((n, d, sorted(order[:n])))
    return out


def not_applicable(kind: str, method: str) -> str | None:
    """Why `method` cannot merge adapters of `kind` (None when it can)."""
    m = get_method(method)
    if kind in DELTA_KINDS and m.align != "none":
        return f"{method} aligns adapter units; {kind} deltas have none"
    if kind == "lora" and m.align != "none" and m.reduction != "avg":
        return f"{method}: aligned LoRA factors are only averaged"
    return None


def head_dir(adapter_dir: Path, kind: str) -> Path:
    """Where a pretrained adapter's classification head was saved."""
    return Path(adapter_dir) / "head" if kind in DELTA_KINDS else Path(adapter_dir)


def merged_model(model_cfg, meta: dict, state: dict[str, torch.Tensor], adapter_dir: Path):
    """The base model holding the merged adapter, written to `adapter_dir` and loaded from
    there, or with the merged delta added to its weights (sparse / full: nothing is written).
    Returns (model, tokenizer)."""
    from mera import deltas
    from mera.models import build_model, write_adapter

    if model_cfg.adapter in DELTA_KINDS:
        model, tok = build_model(model_cfg, 2, adapter=False)
        deltas.apply_delta(model, state)
        return model, tok
    write_adapter(adapter_dir, meta, state)
    return build_model(model_cfg, 2, adapter_dir=adapter_dir)


def load_head(model, directory: Path, name: str) -> torch.nn.Module:
    """A saved classification head, added to the model as `name` and returned."""
    from mera.models import BUILD_LOCK

    with BUILD_LOCK:
        model.load_head(str(directory), load_as=name)
    return model.heads[name]


def fresh_head(model, name: str, num_labels: int, seed: int) -> torch.nn.Module:
    from mera.models import BUILD_LOCK

    with BUILD_LOCK:
        torch.manual_seed(seed)
        model.add_classification_head(name, num_labels=num_labels, overwrite_ok=True)
    return model.heads[name]


def head_logits(head: torch.nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The head's layers on first-token features (its forward minus the feature lookup)."""
    return torch.nn.Sequential.forward(head, feats)


@dataclass(frozen=True)
class HeadSettings:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 8


def train_head(head: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor, s: HeadSettings, seed: int) -> float:
    """Train a head on fixed features (shuffled minibatches, AdamW, head dropout on); returns
    the last step's loss."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=0.0)
    head.train()
    loss = torch.tensor(float("nan"))
    step = 0
    while step < s.steps:
        for idx in torch.randperm(len(feats), generator=g).split(s.batch_size):
            loss = F.cross_entropy(head_logits(head, feats[idx]), labels[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= s.steps:
                break
    head.eval()
    return float(loss.detach())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else float("nan")


def summarise(rows: list[dict]) -> dict[str, float]:
    """Means over tasks of absolute and normalised accuracy, in-distribution and held-out."""
    out: dict[str, float] = {}
    for split in ("in", "held"):
        part = [r for r in rows if r["split"] == split]
        out[f"{split}_n"] = len(part)
        if part:
            out[f"{split}_accuracy"] = sum(r["accuracy"] for r in part) / len(part)
            out[f"{split}_normalised"] = sum(r["normalised"] for r in part) / len(part)
    return out
