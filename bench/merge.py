"""Merge time vs the number of adapters, weights- and activation-based OT (issue 3).

    python bench/merge.py [--data DIR] [--calib-examples 64] [--repeats 3]

N seeded random Pfeiffer adapters with the real shapes of the bundled MiniLM (6 modules,
24 units each); the calibration set is fixed (sst2 training inputs), so `acts` time is N
forward passes over it plus the OT solves. Times are the best of `--repeats`, after a
warm-up. Ends with `RESULT merge_wts_n20_s=<s> merge_acts_n20_s=<s>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    default_data = os.environ.get("MERA_DATA_SOURCE", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data, help="task data in the uniform layout (default: ../shared/data)")
    ap.add_argument("--calib-examples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="2,5,10,20")
    args = ap.parse_args()

    import torch

    from mera import data
    from mera.calibrate import Activations
    from mera.config import ModelConfig
    from mera.merge.core import merge
    from mera.models import adapter_state, build_model
    from mera.tasks import read_task
    from mera.train import set_threads

    set_threads(os.cpu_count() or 1)
    cfg = ModelConfig(max_length=128)
    model, tok = build_model(cfg, 2)
    shapes = {k: v.shape for k, v in adapter_state(model).items()}
    spec = read_task(Path(args.data), "sst2")
    texts = data.cap(data.load_split(Path(args.data), spec, "train"), args.calib_examples, seed=0)
    acts = Activations(model, tok, texts, cfg.max_length)
    sizes = [int(n) for n in args.sizes.split(",")]

    def adapters(n: int) -> list[dict]:
        g = torch.Generator().manual_seed(n)
        return [{k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()} for _ in range(n)]

    merge("mera-wts", adapters(2))  # warm-up: POT import, first solves
    merge("mera-acts", adapters(2), activations=acts)
    rows = []
    for n in sizes:
        states = adapters(n)
        wts = best_of(args.repeats, lambda states=states: merge("mera-wts", states))
        full = best_of(args.repeats, lambda states=states: merge("mera-acts", states, activations=acts))
        rows.append((n, wts, full))

    print(f"merge time (s), best of {args.repeats}; {len(shapes) // 4} modules x 24 units; acts = N forward passes "
          f"over {len(texts)} calibration examples ({len(acts.positions)} tokens) + OT; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'N':>4} {'mera-wts':>10} {'mera-acts':>10}")
    for n, wts, full in rows:
        print(f"{n:>4} {wts:>10.3f} {full:>10.3f}")
    last = {n: (w, a) for n, w, a in rows}
    n = 20 if 20 in last else sizes[-1]
    print(f"RESULT merge_wts_n{n}_s={last[n][0]:.3f} merge_acts_n{n}_s={last[n][1]:.3f}")


if __name__ == "__main__":
    main()
