"""fewshot: fine-tune from an init on K examples per class; evaluate on the validation split."""

from __future__ import annotations

from pathlib import Path

from mera import data
from mera.artifacts import ADAPTER_SUBDIR
from mera.config import SweepConfig
from mera.inits import Init
from mera.plan import Node
from mera.stages.common import inputs, runtime, validation_scores
from mera.tasks import read_task
from mera.unit import Unit, lineage, run_unit

INIT_VERSION = 2  # bump when what an init trains changes: it enters every fine-tune's key


def settings(cfg: SweepConfig, init: Init) -> dict:
    """The few-shot settings that apply to `init` (its lr, not every init's)."""
    f, spec = cfg.fewshot, init.spec
    return {"epochs": f.epochs, "min_steps": f.min_steps, "batch_size": f.batch_size, "lr": f.lr_for(init.kind),
            "weight_decay": f.weight_decay_full if spec.weight_decay else 0.0, "init_version": INIT_VERSION,
            **{k: getattr(f, k) for k in spec.settings}}


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    prep, *upstream = ups
    a = node.args
    return Unit(node.stage, node.name, {
        "target": a["target"], "data": prep["hash"], "init": a["init"], "group": a["group"], "shots": a["shots"],
        "seed": a["seed"], "model": cfg.model.identity(), "fewshot": settings(cfg, cfg.init(a["init"])),
        "max_eval": cfg.data.max_eval, "upstream": lineage(upstream)})


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    from mera.fewshot import start
    from mera.heads import name_labels
    from mera.models import ADAPTER, count_trainable, save_adapter
    from mera.train import TrainSettings, train

    prep, *upstream = ups
    target, group, shots, seed = (node.args[k] for k in ("target", "group", "shots", "seed"))
    init = cfg.init(node.args["init"])
    f = cfg.fewshot
    u = unit(cfg, node, ups)
    st_cfg = u.params["fewshot"]

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), target)
        train_split = data.load_split(cfg.data_dir(), spec, "train")
        train_df = data.sample_k_shot(train_split, shots, seed, spec.num_labels)
        dev_df = data.sample_dev(train_split, shots, seed, spec.num_labels, f.dev_k or shots) \
            if "dev_k" in init.spec.settings else None
        rt = runtime(cfg)
        st = start(cfg, init, spec.num_labels, seed, upstream, train_df, dev_df)
        stats = train(st.model, st.tokenizer, train_df,
                      TrainSettings(f.epochs, f.batch_size, st_cfg["lr"], cfg.model.max_length, seed,
                                    min_steps=f.min_steps, weight_decay=st_cfg["weight_decay"],
                                    device=rt.device, bf16=rt.bf16),
                      extra_loss=st.extra_loss)
        n_eval, scores = validation_scores(cfg, spec, prep["hash"], st.model, st.tokenizer, rt)
        metrics = {**scores, **stats, "trainable_params": count_trainable(st.model)}
        st.model.to("cpu")
        name_labels(st.model, spec.label_names)
        if st.saves == "adapter":
            save_adapter(st.model, tmp / ADAPTER_SUBDIR, with_head=True)
        elif st.saves == "head":
            st.model.save_head(str(tmp / "head"), ADAPTER)
        sources = sorted({s for r in upstream for s in (r.get("sources") or [r["task"]])})
        manifest = {"target": target, "track": prep["track"], "init": init.name, "init_kind": init.kind,
                    "group": group, "shots": shots, "seed": seed, "n_train": len(train_df), "n_eval": n_eval,
                    "metrics": metrics, "sources": sources, "single_source": init.grouped and len(sources) == 1,
                    "weights_kept": st.saves, "runtime": rt.describe(), **st.info,
                    "inputs": inputs(target, prep["hash"], len(train_df) + len(dev_df if dev_df is not None else []),
                                     n_eval)}
        return manifest, metrics

    tags = {"target": target, "init": init.name, "group": group or "-", "shots": shots, "seed": seed}
    return run_unit(cfg, u, parent_id, tags, work)
