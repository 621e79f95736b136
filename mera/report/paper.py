"""Published reference numbers (mera/paper_numbers.yaml) next to this sweep's: AdapterFusion's
Table 1 and MerA's claimed gains."""

from __future__ import annotations

from importlib import resources

from mera.report.stats import MERA


def paper_numbers() -> dict:
    import yaml

    return yaml.safe_load(resources.files("mera").joinpath("paper_numbers.yaml").read_text())


def paper_section(targets: list[str], table_cells: dict, shots: list[int]) -> list[str]:
    ref = paper_numbers()
    names = ref["task_names"]
    t1 = ref["adapterfusion_table1"]
    rows = [t for t in targets if names.get(t) in t1["rows"]]
    out = ["## Published reference numbers (full data, BERT-base; not comparable to few-shot)", "",
           f"{t1['title']}. Rows for this sweep's targets, and the paper's mean.", "",
           "| task | " + " | ".join(t1["columns"]) + " |", "|" + "---|" * (1 + len(t1["columns"]))]
    for t in [*rows, None]:
        key = names[t] if t else "Mean"
        out.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in t1["rows"][key]) + " |")
    claims = ref["mera_claims"]
    out += ["", f"{claims['title']}; next to ours (best K, same-track mera-wts / mera-acts minus the better of "
            "full and adapter, mean over seeds):", "", "| task | MerA claim | ours: mera-wts | ours: mera-acts |",
            "|---|---|---|---|"]
    for task, delta in claims["delta"].items():
        ours = [_same_track_delta(table_cells.get(task.lower(), {}), m, shots) for m in MERA]
        out.append(f"| {task} | +{delta:.1f} | " + " | ".join("-" if d is None else f"{d:+.1f}" for d in ours) + " |")
    return out + [""]


def _same_track_delta(inits: dict, method: str, shots: list[int]) -> float | None:
    label = f"{method} [same-track]"
    if label not in inits:
        return None
    deltas = []
    for k in shots:
        base = [inits[b][str(k)]["mean"] for b in ("full", "adapter") if b in inits and str(k) in inits[b]]
        if base and str(k) in inits[label]:
            deltas.append(100 * (inits[label][str(k)]["mean"] - max(base)))
    return max(deltas) if deltas else None
