"""pretrain: train one source adapter (a distinct init seed per task) and evaluate it."""

from __future__ import annotations

from pathlib import Path

from mera import data
from mera.artifacts import ADAPTER_SUBDIR
from mera.config import SweepConfig
from mera.plan import Node, pretrain_config
from mera.stages.common import inputs, runtime, validation_scores
from mera.tasks import read_task
from mera.unit import Unit, run_unit


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    (prep,) = ups
    kcfg = pretrain_config(cfg, node.args["kind"])
    return Unit(node.stage, node.name, {
        "task": prep["task"], "data": prep["hash"], "model": kcfg.model.identity(),
        "pretrain": kcfg.pretrain.model_dump(exclude={"tasks"}), "max_eval": kcfg.data.max_eval})


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    from mera import deltas
    from mera.heads import name_labels
    from mera.models import build_model, save_adapter, task_seed
    from mera.train import TrainSettings, train

    (prep,) = ups
    u = unit(cfg, node, ups)
    cfg = pretrain_config(cfg, node.args["kind"])
    task = prep["task"]

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), task)
        p, m = cfg.pretrain, cfg.model
        seed = task_seed(p.seed, task)
        rt = runtime(cfg)
        delta = m.adapter in deltas.KINDS
        model, tok = build_model(m, spec.num_labels, seed=seed, adapter=not delta)
        df = data.cap(data.load_split(cfg.data_dir(), spec, "train"), p.max_examples, seed=p.seed)
        if delta:  # sparse / full: a delta on the base weights (mera.deltas)
            before, masks, delta_info = deltas.prepare_training(
                model, tok, df, m.adapter, density=m.density, rule=m.saliency, reduction_factor=m.reduction_factor,
                max_length=m.max_length, batches=m.saliency_batches, batch_size=p.batch_size, seed=seed)
        stats = train(model, tok, df, TrainSettings(p.epochs, p.batch_size, p.lr, m.max_length, seed,
                                                    device=rt.device, bf16=rt.bf16))
        n_eval, scores = validation_scores(cfg, spec, prep["hash"], model, tok, rt)
        metrics = {**scores, **stats}
        name_labels(model, spec.label_names)
        if delta:
            deltas.save_trained(model, tmp / ADAPTER_SUBDIR, before, masks, delta_info)
        else:
            save_adapter(model.to("cpu"), tmp / ADAPTER_SUBDIR, with_head=True)
        manifest = {"task": task, "track": prep["track"], "n_train": len(df),
                    "n_train_available": prep["rows"]["train"], "inputs": inputs(task, prep["hash"], len(df), n_eval),
                    "n_eval": n_eval, "init_seed": seed, "metrics": metrics, "runtime": rt.describe(),
                    **({"delta": delta_info} if delta else {})}
        return manifest, metrics

    return run_unit(cfg, u, parent_id, {"task": task, "track": prep["track"]}, work)
