"""Unit activations of an adapter on fixed calibration tokens, for activation-based OT.

Every adapter is run in the same model on the same tokens (padding masked, the same
token positions kept for all, chosen with a fixed seed), with only that adapter active;
forward hooks read each module's units: a bottleneck's down-projection (before the
nonlinearity by default, METHOD.md 3.5) or a LoRA module's `A x`. The merge library takes
the result as a plain callable `state -> {module prefix: S x r}`.
"""

from __future__ import annotations

import pandas as pd
import torch

from mera.merge.methods import CALIB_CHOICES
from mera.models import ADAPTER, set_adapter_state
from mera.tokens import encode
from mera.train import length_batches

POINTS = CALIB_CHOICES["point"]  # declared once, with the merge parameters
State = dict[str, torch.Tensor]


def _hook_points(model, point: str) -> dict[str, tuple[torch.nn.Module, str]]:
    """State-key prefix -> (module to hook, what to read): bottleneck down-projections and LoRA layers."""
    out = {}
    for name, mod in model.named_modules():
        if name.endswith(f"adapters.{ADAPTER}.adapter_down"):
            prefix = name[: -len("adapter_down")]
            out[prefix] = (mod if point == "post" else mod[0], "output")
        elif hasattr(mod, "loras") and ADAPTER in getattr(mod, "loras", {}):
            out[f"{name}.loras.{ADAPTER}."] = (mod, "lora_input")
    return out


class Activations:
    """Callable `state -> {prefix: S x r activations}` over one fixed calibration set.

    Args:
        model: a model holding our adapter of the right kind and size (its values are
            replaced by each state in turn).
        tokenizer, texts: the calibration inputs (sentence1/sentence2 columns).
        max_length, max_tokens: truncation and the cap S on kept (non-padding) tokens.
        point: "pre" (before the nonlinearity) or "post".
        seed: which tokens are kept when there are more than max_tokens.
    """

    def __init__(self, model, tokenizer, texts: pd.DataFrame, max_length: int = 128, max_tokens: int = 4096,
                 point: str = "pre", seed: int = 0, batch_size: int = 32):
        if point not in POINTS:
            raise ValueError(f"point {point!r} is not one of: {', '.join(POINTS)}")
        if len(texts) == 0:
            raise ValueError("no calibration examples")
        self.model, self.point = model, point
        items = encode(tokenizer, texts, max_length)
        self.batches = [items.batch(idx, tokenizer.pad_token_id)
                        for idx in length_batches(items.lengths, batch_size, rng=None)]
        mask = torch.cat([b["attention_mask"].flatten() for b in self.batches]).bool()
        positions = mask.nonzero().squeeze(1)
        if len(positions) > max_tokens:
            g = torch.Generator().manual_seed(seed)
            positions = positions[torch.randperm(len(positions), generator=g)[:max_tokens].sort().values]
        self.positions = positions
        self.points = _hook_points(model, point)

    @torch.inference_mode()
    def __call__(self, state: State) -> dict[str, torch.Tensor]:
        set_adapter_state(self.model, state)
        self.model.eval()
        seen: dict[str, list[torch.Tensor]] = {p: [] for p in self.points}
        handles = []
        for prefix, (mod, what) in self.points.items():
            if what == "output":
                handles.append(mod.register_forward_hook(
                    lambda m, i, o, p=prefix: seen[p].append(o.flatten(0, -2))))
            else:  # LoRA: units are the r components of A x
                a = state[prefix + "lora_A"]
                handles.append(mod.register_forward_pre_hook(
                    lambda m, i, p=prefix, a=a: seen[p].append(i[0].flatten(0, -2) @ a.T.to(i[0].dtype))))
        try:
            for batch in self.batches:
                self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        return {p: torch.cat(v)[self.positions].double() for p, v in seen.items()}


DEFAULTS = {"point": "pre", "calib": "sources", "calib_examples": 32, "max_tokens": 4096}
SEED = 0  # calibration never depends on the few-shot seed: one merge serves every seed


def from_tasks(model_cfg, anchor_dir, data_dir, tasks: list[str], params: dict) -> Activations:
    """Activations over `calib_examples` training inputs of each task (fixed seed), in a model
    holding the anchor's adapter (kind and size); `params` are the merge's calibration knobs."""
    from pathlib import Path

    from mera import data
    from mera.models import build_model
    from mera.tasks import read_task

    c = {**DEFAULTS, **{k: params[k] for k in DEFAULTS if k in params}}
    data_dir = Path(data_dir)
    texts = pd.concat([data.cap(data.load_split(data_dir, read_task(data_dir, t), "train"), int(c["calib_examples"]),
                                seed=SEED) for t in tasks], ignore_index=True)
    model, tok = build_model(model_cfg, 2, adapter_dir=anchor_dir)
    return Activations(model, tok, texts, model_cfg.max_length, int(c["max_tokens"]), c["point"], seed=SEED)
