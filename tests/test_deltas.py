"""Sparse and full delta adapters (mera.deltas) and their merges: issue 8's unit checks."""

from __future__ import annotations

import pytest
import torch

from mera import data, deltas
from mera.config import ModelConfig
from mera.evaluate import predict
from mera.merge import MergeError
from mera.merge.core import merge
from mera.models import ADAPTER, build_model
from mera.tasks import read_task
from mera.train import TrainSettings, train

MODEL = ModelConfig(max_length=32)


@pytest.fixture(scope="module")
def rte(shared_data):
    spec = read_task(shared_data, "rte")
    return spec, data.load_split(shared_data, spec, "train").head(32)


def _sparse(rte, density=0.01, rule="weight-grad", seed=0):
    spec, df = rte
    model, tok = build_model(MODEL, spec.num_labels, seed=1, adapter=False)
    before, masks, info = deltas.prepare_training(model, tok, df, "sparse", density=density, rule=rule,
                                                  reduction_factor=16, max_length=32, batches=2, batch_size=8,
                                                  seed=seed)
    return model, tok, before, masks, info


@pytest.mark.parametrize("rule", deltas.SALIENCY)
def test_mask_has_exactly_the_requested_density_per_matrix(rte, rule):
    model, _, _, masks, info = _sparse(rte, density=0.013, rule=rule)
    weights = deltas.linear_weights(model)
    assert set(masks) == set(weights) and len(masks) == 6 * 6  # q, k, v, attn out, FFN in, FFN out x 6 layers
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.013 * weights[name].numel()), name
    assert info["density"] == 0.013 and info["saliency"] == rule


def test_default_density_matches_a_bottleneck_adapter(rte):
    model, _, _, masks, info = _sparse(rte, density=None)
    trainable = sum(int(m.sum()) for m in masks.values())
    assert abs(trainable - 113_040) <= len(masks)  # rounding per matrix; METHOD.md 1.2 count at rf 16


def test_saliency_picks_the_largest_weight_times_gradient(rte):
    model, _, _, masks, _ = _sparse(rte, density=0.01)
    other_masks = _sparse(rte, density=0.01, rule="random")[3]
    name = next(iter(masks))
    assert not torch.equal(masks[name], other_masks[name])  # data-driven, not the random rule


def test_training_changes_only_masked_entries(rte):
    model, tok, before, masks, _ = _sparse(rte, density=0.01)
    spec, df = rte
    train(model, tok, df, TrainSettings(epochs=2, batch_size=8, lr=1e-2, max_length=32, seed=0))
    now = dict(model.base_model.named_parameters())
    changed_masked = 0
    for name, old in before.items():
        new = now[name].detach()
        if name in masks:
            assert torch.equal(new[~masks[name]], old[~masks[name]]), f"{name}: an unmasked entry changed"
            changed_masked += int((new[masks[name]] != old[masks[name]]).sum())
        else:
            assert torch.equal(new, old), f"{name} is not in a mask but changed"
    assert changed_masked > 0.9 * sum(int(m.sum()) for m in masks.values())


@pytest.mark.parametrize("kind", deltas.KINDS)
def test_saved_delta_loads_to_identical_logits(rte, kind, tmp_path):
    spec, df = rte
    model, tok = build_model(MODEL, spec.num_labels, seed=1, adapter=False)
    before, masks, info = deltas.prepare_training(model, tok, df, kind, density=0.01, rule="weight-grad",
                                                  reduction_factor=16, max_length=32, batches=1, batch_size=8)
    train(model, tok, df, TrainSettings(epochs=1, batch_size=8, lr=1e-3, max_length=32, seed=0))
    expected = predict(model, tok, df, 32)
    deltas.save_trained(model, tmp_path / "d", before, masks, info)

    meta, state = deltas.read_delta(tmp_path / "d")
    assert meta["kind"] == kind
    if kind == "sparse":
        assert meta["density"] == 0.01 and meta["mask_rule"].startswith("top-k")
        stored = deltas.masks_of(tmp_path / "d")
        assert all(torch.equal(stored[n], masks[n]) for n in masks)
    fresh, _ = build_model(MODEL, spec.num_labels, seed=7, adapter=False)
    assert abs(predict(fresh, tok, df, 32) - expected).max() > 1e-4
    deltas.apply_delta(fresh, state)
    fresh.load_head(str(tmp_path / "d" / "head"), load_as=ADAPTER)
    got = predict(fresh, tok, df, 32)
    if kind == "sparse":  # float64 values: the trained weights come back bit for bit
        assert torch.equal(torch.from_numpy(got), torch.from_numpy(expected))
    else:  # a dense fp32 delta: θ0 + (θ - θ0) rounds, within float precision
        assert abs(got - expected).max() < 1e-5


def _delta(entries: dict[tuple[int, int], float]) -> dict[str, torch.Tensor]:
    w = torch.zeros(2, 3)
    for ij, v in entries.items():
        w[ij] = v
    return {"encoder.layer.0.attention.self.query.weight": w}


def test_merging_one_sparse_adapter_returns_it():
    one = _delta({(0, 0): 0.5, (1, 2): -2.0})
    for method in ("mera-avg", "mera-sum", "ta", "ties", "dare-linear"):
        merged, diag = merge(method, [one])
        assert torch.equal(merged["encoder.layer.0.attention.self.query.weight"],
                           one["encoder.layer.0.attention.self.query.weight"]) and diag["kind"] == "delta"


def test_overlap_aware_average_matches_a_hand_computation():
    key = "encoder.layer.0.attention.self.query.weight"
    a = _delta({(0, 0): 1.0, (0, 1): 2.0})
    b = _delta({(0, 0): 3.0, (1, 1): 4.0})
    c = _delta({(0, 0): 5.0, (0, 1): 6.0, (1, 2): 9.0})
    hand = torch.tensor([[(1 + 3 + 5) / 3, (2 + 6) / 2, 0.0], [0.0, 4.0, 9.0]])
    merged, diag = merge("mera-avg", [a, b, c])  # deltas: averaged where their masks overlap
    assert torch.equal(merged[key], hand) and diag["reduce"] == {"over": "touching"}
    plain, _ = merge("mera-avg", [a, b, c], over="all")  # the plain mean, as an option
    assert torch.allclose(plain[key], (a[key] + b[key] + c[key]) / 3)
    assert torch.equal(merge("mera-sum", [a, b, c])[0][key], a[key] + b[key] + c[key])


def test_ot_alignment_is_refused_for_deltas():
    a, b = _delta({(0, 0): 1.0}), _delta({(1, 1): 1.0})
    with pytest.raises(MergeError, match="aligns units"):
        merge("mera-wts", [a, b])


def test_a_sweep_pretrains_sparse_sources_and_merges_them(tiny):
    """The pretrain and merge units with model.adapter: sparse (no Prefect: test_flow covers it)."""
    from mera import plan, stages
    from mera.stages.prepare import import_data

    cfg = tiny({"model.adapter": "sparse", "model.density": 0.002, "pretrain.tasks": ["imdb", "mr"],
                "merge.groups": ["same-track"], "merge.methods": ["mera-avg", "ties"], "fewshot.inits": ["head"]})
    import_data(cfg)
    nodes = [n for n in plan.build(cfg) if n.stage in ("prepare", "pretrain")]
    out = stages.run_all(cfg, nodes)
    adapters = [out[f"pretrain/{t}.sparse"] for t in ("imdb", "mr")]
    for a in adapters:
        assert a["delta"]["kind"] == "sparse" and a["delta"]["density"] == 0.002
    masks = [deltas.masks_of(f"{a['path']}/adapter") for a in adapters]
    for method in ("mera-avg", "ties"):
        merged = stages.run(cfg, plan.merge_node("sst2", "same-track", method, ["imdb", "mr"], "sparse"), adapters)
        meta, state = deltas.read_delta(f"{merged['path']}/adapter")
        assert meta["kind"] == "sparse"
        union = {n: masks[0][n] | masks[1][n] for n in masks[0]}
        assert all(not state[n][~union[n]].any() for n in state)  # nothing off the sources' masks
        model, _ = build_model(MODEL, 2, adapter=False)
        deltas.apply_delta(model, state)  # applies onto the base model
