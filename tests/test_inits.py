"""Every init of the benchmark trains and evaluates on a tiny sweep (the plan's units run
in-process: the Prefect flow around them is covered by test_flow)."""

from __future__ import annotations

import shutil

import pytest
import torch

from mera import data, plan, stages
from mera.configfile import load_config
from mera.stages.prepare import import_data
from tests.conftest import REPO

INITS = ["head", "full", "adapter", "adapter-from:imdb", "best-source", "fusion", "mera-avg", "frozen:mera-avg"]


EVERY_INIT = {"merge.groups": ["same-track", "cross-track"], "merge.methods": ["mera-avg"], "fewshot.inits": INITS}


@pytest.fixture(scope="module")
def sweep(tiny):
    """The tiny project's sources pretrained and merged for sst2, and a fine-tune per init."""
    cfg = tiny(EVERY_INIT)
    import_data(cfg)
    nodes = plan.build(cfg)
    out = stages.run_all(cfg, nodes)
    preps = {n.name: out[n.id] for n in nodes if n.stage == "prepare"}
    adapters = {n.name: out[n.id] for n in nodes if n.stage == "pretrain"}
    results = {(n.args["init"], n.args["group"]): out[n.id] for n in nodes if n.stage == "fewshot"}
    return cfg, preps, adapters, results


def test_every_init_trains_and_evaluates(sweep):
    cfg, _, _, results = sweep
    assert {name for name, _ in results} == set(INITS)
    head_only = results[("head", None)]["metrics"]["trainable_params"]
    assert head_only == 384 * 384 + 384 + 384 * 2 + 2  # the classification head: dense + output layer
    for (name, _group), r in results.items():
        m = r["metrics"]
        assert m["steps"] >= 2 and r["n_eval"] == 16, name
        trainable = m["trainable_params"]
        if name in ("head", "frozen:mera-avg"):
            assert trainable == head_only, name
        elif name == "full":
            assert trainable > 20_000_000
        elif name == "fusion":
            assert trainable > head_only + 6 * 384 * 384  # Q, K, V per layer
        else:  # one Pfeiffer adapter (6 modules x (2 x 384 x 24 + 24 + 384)) + head
            assert trainable == head_only + 6 * (2 * 384 * 24 + 24 + 384), name
    # grouped inits exist per group; the cross-track group of sst2 is qnli alone: single-source
    assert results[("mera-avg", "cross-track")]["single_source"]
    assert results[("mera-avg", "same-track")]["sources"] == ["imdb", "mr"]
    assert results[("adapter-from:imdb", None)]["sources"] == ["imdb"]
    assert results[("fusion", "same-track")]["fused"] == ["imdb", "mr"]


def test_adapterfusion_really_fuses(sweep):
    """Training moves the fusion layers (query, key, value) and nothing of the fused adapters."""
    from mera.fewshot import fusion, fusion_values
    from mera.train import TrainSettings, train

    cfg, preps, adapters, _ = sweep
    members = [adapters["imdb"], adapters["mr"]]
    st = fusion(cfg, 2, 13, members)
    fused = {n: p.detach().clone() for n, p in st.model.named_parameters() if "adapter_fusion_layer" in n}
    frozen = {n: p.detach().clone() for n, p in st.model.named_parameters() if ".adapters." in n and "fusion" not in n}
    assert fused and frozen and all(not p.requires_grad for n, p in st.model.named_parameters() if n in frozen)
    assert st.extra_loss().item() == pytest.approx(0.0, abs=1e-3)  # V starts at the identity
    spec_df = data.sample_k_shot(data.load_split(cfg.data_dir(), _spec(cfg, "sst2"), "train"), 4, 13, 2)
    train(st.model, st.tokenizer, spec_df, TrainSettings(2, 4, 5e-3, 32, 13), extra_loss=st.extra_loss)
    after = dict(st.model.named_parameters())
    moved = [n for n in fused if not torch.equal(after[n], fused[n])]
    assert all(any(f".{part}." in n for n in moved) for part in ("query", "key", "value"))
    assert all(torch.equal(after[n], frozen[n]) for n in frozen)
    assert st.extra_loss().item() > 0  # V has left the identity, and the regulariser sees it
    assert len(fusion_values(st.model)) == 6


def _spec(cfg, task):
    from mera.tasks import read_task

    return read_task(cfg.data_dir(), task)


def test_best_source_never_reads_the_validation_split(sweep, tiny, tmp_path):
    """The choice and its dev scores are the same when sst2's validation split is replaced by
    other rows with other labels; the dev sample is disjoint from the training sample."""
    cfg, preps, adapters, results = sweep
    chosen = results[("best-source", "same-track")]
    assert chosen["chosen_source"] in ("imdb", "mr") and set(chosen["dev_scores"]) == {"imdb", "mr"}
    spec = _spec(cfg, "sst2")
    split = data.load_split(cfg.data_dir(), spec, "train")
    train_df = data.sample_k_shot(split, 2, 13, 2)
    dev_df = data.sample_dev(split, 2, 13, 2, 2)
    assert len(dev_df) == 4 and not set(dev_df["sentence1"]) & set(train_df["sentence1"])

    other = tiny({**EVERY_INIT, "paths.root": str(tmp_path)})
    shutil.copytree(cfg.data_dir(), other.data_dir())
    val = other.data_dir() / "sst2" / "validation.parquet"
    swapped = data.load_split(cfg.data_dir(), spec, "train").tail(40).copy()
    swapped["label"] = 1 - swapped["label"]
    swapped.reset_index(drop=True).to_parquet(val)
    prep = stages.run(other, plan.prepare_node("sst2"), [])
    node = plan.fewshot_node("sst2", other.init("best-source"), "same-track", 2, 13, ["pretrain/imdb", "pretrain/mr"])
    again = stages.run(other, node, [prep, adapters["imdb"], adapters["mr"]])
    assert again["chosen_source"] == chosen["chosen_source"] and again["dev_scores"] == chosen["dev_scores"]
    assert again["key"] != chosen["key"]  # other data: a unit of its own, really re-run


def test_report_has_every_section_and_a_self_contained_html_page(sweep):
    from html.parser import HTMLParser

    from mera.report import write_report

    cfg, _, _, results = sweep
    report = write_report(cfg, list(results.values()), {"fewshot": 1.0}, [])
    text = report.read_text()
    for section in ("## Accuracy", "## (a) OT merges vs naive merges", "## (b) Same-track vs cross-track",
                    "## (c) MerA vs the baselines", "## Published reference numbers", "| SST-2 | 85.17"):
        assert section in text
    assert "| mera-avg [same-track] | mera-avg [cross-track] | 1 |" in text  # one (target, K, seed) pair
    html = (report.parent / "report.html").read_text()
    sources = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            sources.extend(v for k, v in attrs if k in ("src", "href"))

    Collect().feed(html)
    assert sources and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in sources)
    assert "<table>" in html


def test_unknown_inits_and_init_groups_fail_with_the_accepted_names(shared_data):
    from mera.config import ConfigError

    with pytest.raises(ConfigError, match="unknown init 'fussion'; did you mean 'fusion'"):
        load_config(REPO / "configs" / "smoke.yaml", {"fewshot.inits": ["fussion"]})
    with pytest.raises(ConfigError, match="adapter-from:imdb"):
        load_config(REPO / "configs" / "smoke.yaml", {"fewshot.inits": ["adapter-from:imbd"]})
    with pytest.raises(ConfigError, match="init_groups.*'adapter' is not a grouped init"):
        load_config(REPO / "configs" / "smoke.yaml", {"fewshot.init_groups": {"adapter": ["all"]}})


def test_a_unit_is_keyed_by_the_content_of_its_inputs(sweep):
    """A merge's key covers its members' content: a member redone with other bytes gives the
    merge (and what starts from it) a new key; the same bytes keep it."""
    cfg, _, adapters, _ = sweep
    node = next(n for n in plan.build(cfg) if n.id == "merge/sst2.same-track.mera-avg")
    ups = [adapters[u.removeprefix("pretrain/")] for u in node.upstream]
    key = stages.unit(cfg, node, ups).key
    assert key == stages.run(cfg, node, ups)["key"]  # the finished merge, found by that key
    retrained = [{**ups[0], "content": "0" * 16}, *ups[1:]]
    assert stages.unit(cfg, node, retrained).key != key


def test_each_init_kind_is_its_registry_entry(tiny):
    """The sweep above covers every registered kind; the plan starts each from what its entry
    says, its key holds the settings its entry names, and its builder takes the common call."""
    import inspect

    from mera.inits import INITS as REGISTRY
    from mera.registry import load
    from mera.stages.fewshot import settings

    cfg = tiny(EVERY_INIT)
    assert {cfg.init(n).kind for n in INITS} == set(REGISTRY)  # a new entry joins INITS above
    expected = {"none": set(), "source": {"pretrain"}, "merge": {"merge"}, "members": {"pretrain"}}
    for node in (n for n in plan.build(cfg) if n.stage == "fewshot"):
        init = cfg.init(node.args["init"])
        assert {u.split("/")[0] for u in node.upstream[1:]} == expected[init.spec.upstream], node.id
        assert (node.args["group"] is not None) == init.grouped
        assert set(init.spec.settings) <= set(settings(cfg, init)), node.id
    for kind in REGISTRY.values():
        inspect.signature(load(kind.build)).bind(cfg, 2, 13, [], None, None)
