from __future__ import annotations

import torch

from mera import data
from mera.evaluate import predict
from mera.models import adapter_state, build_model, save_adapter
from mera.tasks import read_task
from mera.train import TrainSettings, train


def test_adapter_save_load_round_trip_gives_identical_logits(shared_data, model_cfg, tmp_path):
    spec = read_task(shared_data, "rte")
    df = data.load_split(shared_data, spec, "validation").head(12)
    model, tok = build_model(model_cfg, spec.num_labels, seed=3)
    train(model, tok, df, TrainSettings(epochs=1, batch_size=4, lr=1e-3, max_length=32, seed=0))
    save_adapter(model, tmp_path / "a", with_head=True)

    other, _ = build_model(model_cfg, spec.num_labels, seed=99)  # another init...
    expected = predict(model, tok, df, 32)
    assert abs(predict(other, tok, df, 32) - expected).max() > 1e-4
    other.load_adapter(str(tmp_path / "a"), load_as="mera", with_head=True, set_active=True)  # ...then load
    assert torch.equal(torch.from_numpy(predict(other, tok, df, 32)), torch.from_numpy(expected))


def test_only_adapter_and_head_are_trainable(model_cfg):
    model, _ = build_model(model_cfg, 2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".adapters.mera." in n or "heads.mera" in n for n in names)
    assert sum(v.numel() for v in adapter_state(model).values()) == 113_040  # METHOD.md 1.2, MiniLM rf 16
