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

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mera.deltas import KINDS as DELTA_KINDS


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


def evaluate_pool(cfg, kind: str, model, tok, members: list[str], pool: list[dict], rt) -> list[dict]:
    """The merged model on every task of the pool (pretrain results of one kind): a task of
    the group with its own head, a held-out one with a K-shot head per heldout seed."""
    from mera import data
    from mera.artifacts import ADAPTER_SUBDIR
    from mera.evaluate import features
    from mera.stages.common import EVAL_SEED, eval_tokens
    from mera.tasks import read_task
    from mera.tokens import encode

    mt = cfg.multitask
    heads = HeadSettings(mt.head_steps, mt.head_lr, mt.head_batch_size)
    kcfg = cfg.kind_config(kind)
    rows = []
    for r in sorted(pool, key=lambda r: r["task"]):
        task = r["task"]
        spec = read_task(cfg.data_dir(), task)
        val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
        labels = torch.tensor(val["label"].to_numpy(), dtype=torch.long)
        feats = features(model, tok, eval_tokens(kcfg, spec, tok, val, r["params"]["data"]), rt.eval_batch_size,
                         device=rt.device, bf16=rt.bf16)
        own = r["metrics"]["accuracy"]
        if task in members:
            head = load_head(model, head_dir(Path(r["path"]) / ADAPTER_SUBDIR, kind), f"own-{task}")
            accs = [accuracy(head_logits(head.to("cpu"), feats), labels)]
        else:
            train_split = data.load_split(cfg.data_dir(), spec, "train")
            accs = []
            for seed in mt.heldout_seeds:
                shots = data.sample_k_shot(train_split, mt.heldout_shots, seed, spec.num_labels)
                fk = features(model, tok, encode(tok, shots, cfg.model.max_length), rt.eval_batch_size,
                              device=rt.device, bf16=rt.bf16)
                head = fresh_head(model, f"k-{task}-{seed}", spec.num_labels, seed).to("cpu")
                train_head(head, fk, torch.tensor(shots["label"].to_numpy(), dtype=torch.long), heads, seed)
                accs.append(accuracy(head_logits(head, feats), labels))
        acc = sum(accs) / len(accs)
        rows.append({"task": task, "track": r["track"], "split": "in" if task in members else "held",
                     "accuracy": acc, "per_seed": accs, "own_accuracy": own,
                     "normalised": acc / own if own > 0 else float("nan"), "n_eval": len(val)})
    return rows
