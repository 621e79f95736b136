"""Training throughput: mera's loop vs the adapters library's AdapterTrainer (issue 6).

    python bench/train_throughput.py [--data DIR] [--task sst2] [--examples 2000] [--epochs 1]
                                     [--epochs 2] [--max-length 128] [--device auto]

Same base model (bundled MiniLM, or `--model`), same Pfeiffer adapter and head built from the same seed,
same task rows, batch size, length cap, epochs, optimiser (AdamW, linear decay, 6% warm-up,
clipping at 1.0) and lr. Both get the rows tokenised beforehand (not timed); the Trainer gets
the usual `DataCollatorWithPadding` (pads each batch to its longest row), mera its own loop
(length-bucketed batches, no per-step host syncs, bf16 autocast on CUDA, the Trainer bf16
too). Timed: the training call only. Both final models are scored on the task's validation
split by the same function. A few steps on a throwaway model warm the device first. Ends
with `RESULT train_speedup=<mera/trainer> ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    default_data = os.environ.get("MERA_DATA_SOURCE", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data, help="task data in the uniform layout (default: ../shared/data)")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="the bundled MiniLM, a local directory or a hub id")
    args = ap.parse_args()

    import torch
    from adapters import AdapterTrainer
    from transformers import DataCollatorWithPadding, TrainingArguments

    from mera import data
    from mera.config import ModelConfig
    from mera.evaluate import evaluate
    from mera.models import build_model
    from mera.tasks import read_task
    from mera.tokens import encode
    from mera.train import Runtime, TrainSettings, train

    rt = Runtime.of(args.device)
    spec = read_task(Path(args.data), args.task)
    df = data.cap(data.load_split(Path(args.data), spec, "train"), args.examples, seed=0)
    val = data.load_split(Path(args.data), spec, "validation")
    cfg = ModelConfig(name=args.model, max_length=args.max_length)

    def fresh():
        return build_model(cfg, spec.num_labels, seed=args.seed)

    model, tok = fresh()
    items = encode(tok, df, args.max_length)
    val_items = encode(tok, val, args.max_length)
    n = len(df) * args.epochs
    score = lambda m: evaluate(m, tok, val, spec.num_labels, args.max_length, items=val_items,  # noqa: E731
                               device=rt.device, bf16=rt.bf16, batch_size=rt.eval_batch_size)["accuracy"]
    sync = torch.cuda.synchronize if rt.device == "cuda" else (lambda: None)

    # warm-up (not timed): the device's kernels and allocator, on a throwaway model
    warm, _ = fresh()
    train(warm, tok, df.head(64), TrainSettings(1, args.batch_size, args.lr, args.max_length, args.seed,
                                                device=rt.device, bf16=rt.bf16), items=items.subset(range(64)))
    del warm

    # mera
    sync()
    start = time.perf_counter()
    train(model, tok, df, TrainSettings(args.epochs, args.batch_size, args.lr, args.max_length, args.seed,
                                        device=rt.device, bf16=rt.bf16), items=items)
    sync()
    t_mera = time.perf_counter() - start
    acc_mera = score(model)

    # AdapterTrainer
    model, tok = fresh()
    rows = [{"input_ids": items.ids[i].tolist(), "attention_mask": [1] * len(items.ids[i]),
             **({"token_type_ids": items.types[i].tolist()} if items.types is not None else {}),
             "labels": int(df["label"].iloc[i])} for i in range(len(items))]
    targs = TrainingArguments(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "mera-bench-trainer"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="linear", warmup_ratio=0.06,
        weight_decay=0.0, max_grad_norm=1.0, seed=args.seed, save_strategy="no", logging_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=rt.device == "cpu", bf16=rt.bf16, dataloader_num_workers=0)
    trainer = AdapterTrainer(model=model, args=targs, train_dataset=rows, data_collator=DataCollatorWithPadding(tok))
    sync()
    start = time.perf_counter()
    trainer.train()
    sync()
    t_trainer = time.perf_counter() - start
    acc_trainer = score(trainer.model)

    device = rt.describe()
    print(f"task {args.task}: {len(df)} examples x {args.epochs} epoch(s), batch {args.batch_size}, max_length "
          f"{args.max_length}, lr {args.lr}, on {device['device_name']} ({device['precision']}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'loop':<16}{'seconds':>10}{'examples/s':>12}{'val acc':>10}")
    for name, t, acc in (("mera", t_mera, acc_mera), ("AdapterTrainer", t_trainer, acc_trainer)):
        print(f"{name:<16}{t:>10.1f}{n / t:>12.1f}{100 * acc:>10.2f}")
    print(f"RESULT train_speedup={t_trainer / t_mera:.3f} mera_ex_s={n / t_mera:.1f} trainer_ex_s={n / t_trainer:.1f} "
          f"mera_acc={100 * acc_mera:.2f} trainer_acc={100 * acc_trainer:.2f} device={rt.device}")


if __name__ == "__main__":
    main()
