"""`mera`: the command line.

    mera run --config configs/smoke.yaml            the whole benchmark (resumable)
    mera run --config X --until pretrain            stop after a stage (what dvc.yaml calls)
    mera data import --from ../shared/data          copy tasks into data/ and version them with DVC
    mera ui --config configs/smoke.yaml             MLflow UI over the project's store
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mera.config import ConfigError, load_config, parse_override



def _user_errors() -> tuple[type[Exception], ...]:
    from mera.merge import MergeError
    from mera.models import ModelError
    from mera.tasks import TaskError

    return (ConfigError, TaskError, ModelError, MergeError)


def _load(args) -> "object":
    overrides = dict(parse_override(s) for s in args.set or [])
    return load_config(args.config, overrides)


def cmd_run(args) -> int:
    from mera.units import STAGES

    cfg = _load(args)
    if args.until not in STAGES:
        raise ConfigError(f"--until {args.until!r} is not a stage; accepted: {', '.join(STAGES)}")
    from flows import env

    env.configure(cfg)
    start = time.perf_counter()
    if not args.force:
        from mera.units import finished_sweep

        done = finished_sweep(cfg, args.until)
        if done is not None:
            n = sum(len(v) for v in done.values())
            print(f"sweep {cfg.name!r}: nothing to do, all {n} units up to {args.until} are finished "
                  f"({time.perf_counter() - start:.1f} s; --force re-enters the flow, where they are cache hits)")
            if args.until == "report":
                print(f"report: {cfg.paths.resolve('reports') / cfg.name / 'report.md'}")
            return 0
    from flows.benchmark import run

    out = run(cfg, args.until)
    print(f"sweep {cfg.name!r}: {args.until} done in {time.perf_counter() - start:.1f} s "
          f"(MLflow parent run {out['parent_run_id']})")
    for stage, seconds in out.get("timings", {}).items():
        print(f"  {stage:9s} {seconds:7.1f} s")
    if "report" in out:
        print(f"report: {out['report']}")
    return 0


def cmd_data_import(args) -> int:
    from mera.data import import_from_dir, import_from_hub, version_with_dvc

    data_dir = Path(args.data_dir)
    if args.source == "hub":
        if not args.tasks:
            raise ConfigError("--from hub needs --tasks (comma-separated hub task names)")
        names = args.tasks.split(",")
        for name in names:
            import_from_hub(data_dir, name)
    else:
        names = import_from_dir(Path(args.source), data_dir, args.tasks.split(",") if args.tasks else None)
    print(f"imported {len(names)} task(s) into {data_dir}: {', '.join(names)}")
    dvc_file = None if args.no_dvc else version_with_dvc(data_dir)
    if dvc_file:
        print(f"versioned with DVC: {dvc_file}")
    return 0


def cmd_ui(args) -> int:
    cfg = _load(args)
    from mera.units import tracker

    track = tracker(cfg)
    track.experiment_id()
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "ui", "--backend-store-uri", track.uri, "--host", "127.0.0.1", "--port", str(args.port),
           "--workers", "1"]
    if track.artifact_root:
        cmd += ["--default-artifact-root", track.artifact_root.as_uri()]
    print("MLflow UI at http://127.0.0.1:%d  (%s)" % (args.port, " ".join(cmd)))
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # light on 2 cores
    return subprocess.call(cmd)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mera", description="Benchmark merging pretrained adapters for few-shot learning.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", required=True, help="sweep YAML, e.g. configs/smoke.yaml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (YAML value)")

    run = sub.add_parser("run", help="run (or resume) the benchmark flow")
    with_config(run)
    run.add_argument("--until", default="report", help="last stage to run: prepare, pretrain, merge, fewshot, report")
    run.add_argument("--force", action="store_true",
                     help="enter the flow even when every unit is finished (they are then Prefect cache hits)")
    run.set_defaults(fn=cmd_run)

    data = sub.add_parser("data", help="data commands").add_subparsers(dest="data_command", required=True)
    imp = data.add_parser("import", help="copy tasks in the uniform layout (or from the hub) into data/")
    imp.add_argument("--from", dest="source", required=True, help="a directory <dir>/<task>/meta.json, or 'hub'")
    imp.add_argument("--tasks", help="comma-separated task names (default: every task in the directory)")
    imp.add_argument("--data-dir", default="data")
    imp.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` afterwards")
    imp.set_defaults(fn=cmd_data_import)

    ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the project's store")
    with_config(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except _user_errors() as exc:
        print(f"mera: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
