"""What several stages' recipes share: the run's device and the validation scores."""

from __future__ import annotations

from mera import data
from mera.config import SweepConfig

EVAL_SEED = 0  # the validation cap draws the same examples for every run


def inputs(task: str, data_hash: str, train_rows: int, eval_rows: int) -> list[dict]:
    """What a training unit read, for its manifest and its MLflow dataset inputs."""
    return [{"task": task, "split": "train", "rows": train_rows, "hash": data_hash, "context": "training"},
            {"task": task, "split": "validation", "rows": eval_rows, "hash": data_hash, "context": "evaluation"}]


def runtime(cfg: SweepConfig):
    """The device, precision and evaluation batch of this run (mera.train.Runtime)."""
    from mera.train import Runtime

    return Runtime.of(cfg.run.device, cfg.run.precision, cfg.run.eval_batch_size)


def eval_tokens(cfg: SweepConfig, spec, tokenizer, df, data_hash: str):
    """The validation split's tokens, subset to df's rows (the split or a capped sample of
    it that kept the split's index). Every fine-tune of a target evaluates on the same rows,
    so the split is tokenised once per tokenizer, max_length and task content and cached;
    a K-shot training sample is small enough to tokenise where it is used."""
    from mera.tokens import cached

    items = cached(tokenizer, lambda: data.load_split(cfg.data_dir(), spec, "validation"), cfg.model.max_length,
                   cfg.paths.resolve("artifacts") / "tokens", f"{spec.name}.validation", data_hash)
    if len(df) and int(df.index.max()) >= len(items):
        raise ValueError(f"{spec.name}: validation rows beyond the split's {len(items)} (index not kept)")
    return items.subset(df.index)


def validation_scores(cfg: SweepConfig, spec, data_hash: str, model, tokenizer, rt) -> tuple[int, dict[str, float]]:
    """Accuracy and macro-F1 of a trained model on its task's validation split (seeded cap
    `data.max_eval`), on the split's cached tokens and the run's device: (rows, metrics)."""
    from mera.evaluate import evaluate

    val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
    return len(val), evaluate(model, tokenizer, val, spec.num_labels, cfg.model.max_length,
                              items=eval_tokens(cfg, spec, tokenizer, val, data_hash), device=rt.device, bf16=rt.bf16,
                              batch_size=rt.eval_batch_size)
