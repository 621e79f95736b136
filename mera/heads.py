"""The one name every model's adapter and head carry, and freezing all but the head: what
mera.models (adapters) and mera.deltas (delta adapters) both build on."""

from __future__ import annotations

ADAPTER = "mera"  # every model holds exactly one adapter and one head under this name


def head_parameters(model) -> list:
    return list(model.heads[ADAPTER].parameters())


def train_only_head(model) -> None:
    """Freeze everything (PLM, adapters, fusion) but the classification head."""
    for p in model.parameters():
        p.requires_grad = False
    for p in head_parameters(model):
        p.requires_grad = True


def name_labels(model, label_names) -> None:
    """The task's label names in the head's config, so a saved head maps its outputs to them
    (the library's default is LABEL_0, LABEL_1, ...)."""
    model.heads[ADAPTER].config["label2id"] = {name: i for i, name in enumerate(label_names)}
