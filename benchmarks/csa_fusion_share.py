"""How often CSA's balanced head actually trains: per epoch, the share of steps that fused
contexts (the balanced head gets no loss on the others), the runs that never fused, and the
samples pushed into the bank per step, averaged over the seeds of a finished ``reproduce table1 / figure4``
(or, with ``--variants``, ``reproduce ablations``) output folder.

    python benchmarks/csa_fusion_share.py RUNS_FOLDER [--variants] [--output FILE.json]

RUNS_FOLDER is the study's ``<output>/runs``: one folder per dataset, ``csa/seed*/curve.json`` in it;
with ``--variants`` every run folder of a dataset is summarised (an ablation's rows), keyed
``dataset/variant``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def summarize(runs: Path, variants: bool = False) -> dict:
    out = {}
    folders = sorted(p for p in runs.glob("*/*") if p.is_dir() and (variants or p.name == "csa"))
    for folder in folders:
        seeds = sorted(folder.glob("seed*/curve.json"))
        curves = [json.loads(f.read_text()) for f in seeds]
        if not curves:
            continue
        fused = np.array([[e["fused"] for e in c] for c in curves])
        pushed = np.array([[e["pushed"] for e in c] for c in curves])
        key = f"{folder.parent.name}/{folder.name}" if variants else folder.parent.name
        # the balanced head got no loss at all in these: it stays the untrained initial head
        never = [f.parent.name for f, n in zip(seeds, fused.sum(1)) if n == 0]
        out[key] = {"seeds": len(curves),
                    "fused_share_per_epoch": fused.mean(0).round(3).tolist(),
                    "fused_share_whole_run": round(float(fused.mean()), 3),
                    "runs_never_fused": len(never),
                    "seeds_never_fused": never,
                    "pushed_per_step_per_epoch": pushed.mean(0).round(2).tolist()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--variants", action="store_true", help="every run folder of a dataset (ablation rows), not only csa")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not args.runs.is_dir():
        raise SystemExit(f"{args.runs} is not a folder; pass the study's <output>/runs")
    summary = summarize(args.runs, args.variants)
    print("| Runs | seeds | share of steps fused, epochs 1-8 | whole run | runs never fused | pushed per step, epochs 1-8 |")
    print("|---|---|---|---|---|---|")
    for d, s in summary.items():
        print(f"| {d} | {s['seeds']} | {' '.join(f'{v:.2f}' for v in s['fused_share_per_epoch'])} | "
              f"{s['fused_share_whole_run']:.2f} | {s['runs_never_fused']} | {' '.join(f'{v:.1f}' for v in s['pushed_per_step_per_epoch'])} |")
    if args.output:
        command = f"python benchmarks/csa_fusion_share.py {args.runs}{' --variants' if args.variants else ''}"
        args.output.write_text(json.dumps({"command": command, **summary}, indent=1))


if __name__ == "__main__":
    main()
