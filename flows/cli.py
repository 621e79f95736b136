"""`mera`: the command line.

    mera run --config configs/smoke.yaml            the whole benchmark (resumable)
    mera run --config X --until pretrain            stop after a stage (what dvc.yaml calls)
    mera data import --from ../shared/data          copy tasks into data/ and version them with DVC
    mera merge --adapter A --adapter B --method mera-wts --out merged/
                                                    merge saved adapters into one, outside a sweep
    mera status --config X                          finished / missing units per stage
    mera report --config X                          the report from what has finished
    mera schedule --config X --cron "0 3 * * 1"     a cron-scheduled deployment (needs `prefect server start`)
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

from mera.config import BUNDLED_MODEL, ConfigError
from mera.configfile import load_config, parse_override


def user_errors() -> tuple[type[Exception], ...]:
    from mera.preflight import user_errors as errors  # pandas and torch only when something went wrong

    return errors()


def _load(args) -> object:
    overrides = dict(parse_override(s) for s in args.set or [])
    return load_config(args.config, overrides)


def cmd_run(args) -> int:
    from mera.plan import STAGES

    cfg = _load(args)
    if args.until not in STAGES:
        raise ConfigError(f"--until {args.until!r} is not a stage; accepted: {', '.join(STAGES)}")
    from flows import env

    env.configure(cfg)
    start = time.perf_counter()
    from mera.artifacts import sweep_lock

    if not args.force:  # read-only, so no lock: manifests appear atomically
        from mera.status import finished_sweep, walk, write_lineage

        state = walk(cfg)
        for damaged in [d for s in state.values() for d in s["damaged"]]:
            print(f"redoing {damaged} (units downstream of it follow if its new content differs)")
        done = finished_sweep(cfg, args.until, state)
        if done is not None:
            n = sum(len(v) for v in done.values())
            print(f"sweep {cfg.name!r}: nothing to do, all {n} units up to {args.until} are finished "
                  f"({time.perf_counter() - start:.1f} s; --force re-enters the flow, where they are cache hits)")
            if args.until == "report":
                print(f"report: {cfg.paths.resolve('reports') / cfg.name / 'report.md'}")
            write_lineage(cfg, args.until, state)
            return 0
    from mera.preflight import check_config, preflight

    check_config(cfg)  # what the config alone decides, before anything is written (the lock included)
    with sweep_lock(cfg.paths.resolve("artifacts"), cfg.name):
        from flows import server
        from mera.stages.prepare import import_data

        # Prefect's server boots in its own process beside the checks and imports; on a new
        # Prefect home only once they passed, so a mistake leaves no database behind
        api = server.spawn() if server.database_exists() else None
        import_data(cfg)
        preflight(cfg)
        api = api or server.spawn()
        from flows.benchmark import run

        out = run(cfg, args.until, api)
    from mera.status import write_lineage

    write_lineage(cfg, args.until)  # what dvc.yaml's stages output
    print(f"sweep {cfg.name!r}: {args.until} done in {time.perf_counter() - start:.1f} s "
          f"(MLflow parent run {out['parent_run_id']})")
    for stage, seconds in out.get("timings", {}).items():
        print(f"  {stage:9s} {seconds:7.1f} s")
    if "report" in out:
        print(f"report: {out['report']}")
    if out["failed"]:
        print(f"{len(out['failed'])} unit(s) failed (the rest finished; run the same command again to retry them):",
              file=sys.stderr)
        for f in out["failed"][:20]:
            print(f"  {f['stage']} {f['unit']}: {f['failed']}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args) -> int:
    """Per stage: done / missing counts, from the manifests alone (nothing runs, nothing is written)."""
    from mera.status import walk

    cfg = _load(args)
    state = walk(cfg)
    print(f"sweep {cfg.name!r} ({cfg.paths.resolve('artifacts')}):")
    for stage, units in state.items():
        print(f"  {stage:9s} {len(units['done']):5d} done  {len(units['missing']):5d} missing"
              f"  {len(units['failed']):5d} failed")
    for u in [f for s in state.values() for f in s["failed"]][:20]:
        print(f"  failed {u['unit']} ({u['at']}): {u['error'][:160]}")
    for damaged in [d for s in state.values() for d in s["damaged"]]:
        print(f"  damaged {damaged} (the next run redoes it)")
    missing = [n for u in state.values() for n in u["missing"]]
    if missing and args.verbose:
        print("missing:\n  " + "\n  ".join(missing))
    return 0


def cmd_report(args) -> int:
    """(Re)write the report from the fine-tunes finished so far."""
    from mera.report import write_report
    from mera.status import walk

    cfg = _load(args)
    state = walk(cfg)
    results, evals = state["fewshot"]["done"], state["mergeeval"]["done"]
    if not results and not evals:
        raise ConfigError(f"sweep {cfg.name!r} has no finished fine-tunes or merge-evals under "
                          f"{cfg.paths.resolve('artifacts')}; run `mera run --config {args.config}` first")
    path = write_report(cfg, results, None, state["merge"]["done"], None, evals, state["fewshot"]["todo"])
    left = len(state["fewshot"]["missing"]) + len(state["mergeeval"]["missing"])
    print(f"report: {path} ({len(results)} fine-tunes, {len(evals)} merge-evals"
          f"{f'; {left} not finished yet' if left else ''})")
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


def _source_info(adapter_dir: Path) -> tuple[str, int | None]:
    """(task name, training-set size) from a mera unit's manifest beside the adapter, else the dir name."""
    from mera.artifacts import read_manifest

    m = read_manifest(adapter_dir.parent) or {}
    name = m.get("task") or (adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name)
    return name, m.get("n_train_available")


def method_list() -> str:
    """Every registered merge method with a line on what it does."""
    from mera.merge import CALIB_PARAMS, METHODS, OT_PARAMS

    width = max(map(len, METHODS))
    lines = [f"  {name:{width}s}  {m.description}" + (f" [{', '.join(m.reduce_params)}]" if m.reduce_params else "")
             for name, m in METHODS.items()]
    return "\n".join([*lines, f"  aligned methods also take: {', '.join(OT_PARAMS)}",
                      f"  activation-aligned ones also: {', '.join(CALIB_PARAMS)}"])


def cmd_merge(args) -> int:
    import json

    if args.list:
        print("merge methods (mera merge --method NAME, merge.methods in a config):\n" + method_list())
        return 0
    if not args.adapter or not args.method or not args.out:
        raise ConfigError("mera merge needs --adapter (two or more), --method and --out; "
                          "mera merge --list shows the methods")

    from mera.artifacts import atomic_dir
    from mera.config import ModelConfig
    from mera.merge import MergeError, get_method, validate
    from mera.merge.core import mean_costs, merge
    from mera.models import read_adapter, write_adapter

    params = dict(parse_override(p) for p in args.param or [])
    dirs = [Path(d) for d in args.adapter]
    info = [_source_info(d) for d in dirs]
    names, sizes = [n for n, _ in info], [s for _, s in info]
    validate(args.method, params, names=names)
    read = [read_adapter(d) for d in dirs]
    base = read[0][0]
    for d, (meta, _) in zip(dirs[1:], read[1:]):
        if any(meta.get(k) != base.get(k) for k in ("hidden_size", "model_type", "model_class")):
            raise MergeError(f"{d} was trained on another base model ({meta.get('model_name')!r}, hidden size "
                             f"{meta.get('hidden_size')}) than {dirs[0]} ({base.get('model_name')!r}, hidden size "
                             f"{base.get('hidden_size')}); merge adapters of one base model")
        if meta.get("config") != base.get("config"):
            raise MergeError(f"{d} has another adapter config than {dirs[0]} (kind, reduction factor or rank differ); "
                             "merge adapters of one config")
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    acts = None
    if get_method(args.method).align == "ot-acts" and len(dirs) > 1:
        from mera.calibrate import from_tasks

        acts = from_tasks(ModelConfig(name=args.model), dirs[0], args.data_dir, args.calib or [n for n, _ in info],
                          params)
    merged, diag = merge(args.method, [st for _, st in read], activations=acts, names=names,
                         sizes=sizes if None not in sizes else None, **params)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"--out {str(out)!r} exists and is not empty; choose a new directory or pass --overwrite")
    with atomic_dir(out) as tmp:
        write_adapter(tmp, read[0][0], merged)
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1))
    costs, extra = mean_costs(diag), ""
    if costs:
        extra = (f"; anchor {names[diag['alignment']['anchor']]}, mean unit cost {costs['cost_before']:.4f} -> "
                 f"{costs['cost_after']:.4f}")
    print(f"merged {len(dirs)} adapter(s) with {args.method} into {out}{extra}")
    return 0


def cmd_schedule(args) -> int:
    cfg = _load(args)
    from flows import env

    env.configure(cfg)
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("mera schedule needs a Prefect server: start one with `prefect server start` and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (the ephemeral one stops with this process)")
    from prefect import serve

    from flows.schedule import deployment

    dep = deployment(args.config, args.cron, args.until, args.set)
    extra = f", overrides {' '.join(args.set)}" if args.set else ""
    print(f"deployment benchmark-from-file/{dep.name}: cron {args.cron!r}, config {Path(args.config).resolve()}"
          f"{extra}; serving it (Ctrl-C stops serving and pauses the schedule; this command again resumes it)")
    serve(dep, limit=1)  # one sweep at a time: a run still going when the next is due delays it
    return 0


def cmd_ui(args) -> int:
    cfg = _load(args)
    from mera.unit import tracker

    track = tracker(cfg)
    track.experiment_id()
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "ui", "--backend-store-uri", track.uri, "--host", "127.0.0.1", "--port", str(args.port),
           "--workers", "1"]
    if track.artifact_root:
        cmd += ["--default-artifact-root", track.artifact_root.as_uri()]
    print(f"MLflow UI at http://127.0.0.1:{args.port}  ({' '.join(cmd)})")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # light on 2 cores
    return serve_until_stopped(cmd)


def serve_until_stopped(cmd: list[str]) -> int:
    """Run a server command in a process group of its own and end the whole group (the server
    and any workers it spawned) when this process gets SIGTERM or Ctrl-C."""
    import signal

    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop(*_) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop()
        proc.wait()
        return 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mera", description="Benchmark merging pretrained adapters for few-shot learning.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", required=True, help="sweep YAML, e.g. configs/smoke.yaml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (YAML value)")

    run = sub.add_parser("run", help="run (or resume) the benchmark flow")
    with_config(run)
    run.add_argument("--until", default="report",
                     help="last stage to run: prepare, pretrain, merge, fewshot, mergeeval, report")
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

    mg = sub.add_parser("merge", help="merge saved adapters into one (loads with the adapters library)",
                        epilog="merge methods:\n" + method_list(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    mg.add_argument("--list", action="store_true", help="list the merge methods with what each does, and exit")
    mg.add_argument("--adapter", action="append", metavar="DIR", help="a saved adapter directory (repeat: two or more)")
    mg.add_argument("--method", help="a registered merge method (listed below), e.g. mera-wts, mera-acts, ties")
    mg.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method parameter (YAML value)")
    mg.add_argument("--out", help="directory for the merged adapter")
    mg.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    mg.add_argument("--calib", action="append", metavar="TASK",
                    help="ot-acts: calibration task(s) in --data-dir (default: the adapters' own tasks)")
    mg.add_argument("--data-dir", default="data", help="task data for ot-acts calibration (default: data)")
    mg.add_argument("--model", default=BUNDLED_MODEL, help="base model for ot-acts (default: the bundled MiniLM)")
    mg.set_defaults(fn=cmd_merge)

    st = sub.add_parser("status", help="per stage: finished and missing units (runs nothing)")
    with_config(st)
    st.add_argument("--verbose", "-v", action="store_true", help="list the missing units")
    st.set_defaults(fn=cmd_status)

    rp = sub.add_parser("report", help="write the report from the fine-tunes finished so far")
    with_config(rp)
    rp.set_defaults(fn=cmd_report)

    sc = sub.add_parser("schedule", help="register a cron-scheduled deployment of the sweep and serve it")
    with_config(sc)
    sc.add_argument("--cron", required=True, help="cron expression, e.g. '0 3 * * 1' (03:00 every Monday)")
    sc.add_argument("--until", default="report")
    sc.set_defaults(fn=cmd_schedule)

    ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the project's store")
    with_config(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    from flows.env import before_torch

    before_torch()
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except user_errors() as exc:
        if args.debug:
            raise
        print(f"mera: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("mera: interrupted: finished units are kept, unfinished ones left no trace; "
              "run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
