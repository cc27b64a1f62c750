"""cRT's stage 2 under each recipe on one finished representation: how much of a cRT gap its stage 2 explains.

The paper's cRT figure for CIFAR-LT comes from another code base than the CSA release whose stage 2 the
shipped configs use (10 epochs at a constant 0.2, the classifier going on from stage 1's). This forks
(``tailshift fork``) a finished cRT run at its stage 2 under the other stage-2 recipes shipped in
``configs/_base_/recipes`` for the run's dataset (Kang et al.'s, MiSLAS's), each on the same frozen
representation, and prints All / Many / Med / Few of each beside the run's own two heads (its stage-1 CE
head and its cRT). Stage 2 is minutes where stage 1 is hours, so every recipe costs little.

    python benchmarks/crt_stage2.py RUN --runs-dir /tmp/forks --out benchmarks/results/table2_cifar10-lt_200ep
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from report import cpu_model, write_report

from tailshift.fork import fork_run
from tailshift.reproduce.table2 import DATASETS, RECIPES, stage2_overrides

GROUPS = ("all", "many", "med", "few")


def stage2_recipes(dataset: str) -> dict[str, tuple[str, ...]]:
    """Each recipe with its own cRT stage 2 on ``dataset``, by name, as overrides."""
    return {name: stage2_overrides(name, dataset, "crt") for name in RECIPES
            if stage2_overrides(name, dataset, "crt")}


def row(label: str, result: dict, seconds: float | None, changes: str) -> dict:
    return {"stage 2": label, **{g: result[g] for g in GROUPS}, "seconds": seconds, "overrides": changes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished cRT run folder (trained with train.checkpoint=true)")
    parser.add_argument("--dataset", default="cifar10-lt", choices=sorted(DATASETS),
                        help="the Table 2 dataset the run trained on, which picks the recipes' stage 2")
    parser.add_argument("--runs-dir", required=True, help="where the forks' run folders go (resumed if there)")
    parser.add_argument("--out", required=True, help="folder for crt_stage2.md / .json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fork (default 1)")
    args = parser.parse_args()

    source = json.loads((Path(args.run) / "metrics.json").read_text())
    rows = [row("the run's stage 1 (CE head, no stage 2)", source["heads"]["ce"], None, "-"),
            row("csa-release (the run's own)", source["heads"]["crt"],
                sum(r["seconds"] for r in source["curve"] if r["stage"] == "retrain"), "-")]
    for name, overrides in stage2_recipes(args.dataset).items():
        forked = fork_run(args.run, Path(args.runs_dir) / name,
                          [*overrides, f"threads={args.threads}", "progress=false"])
        retrain = [r for r in forked["curve"] if r["stage"] == "retrain"]
        rows.append(row(name, forked["heads"]["crt"], sum(r["seconds"] for r in retrain), " ".join(overrides)))

    def cell(value):
        return "-" if value is None else f"{value:.1f}"

    lines = ["| Stage 2 | All | Many | Med | Few | Stage-2 wall (s) | Overrides |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage 2']} | {' | '.join(cell(r[g]) for g in GROUPS)} | {cell(r['seconds'])} | "
              f"{r['overrides'] if r['overrides'] == '-' else '`' + r['overrides'] + '`'} |" for r in rows]
    note = (f"One representation, several classifiers: the cRT run in `{args.run}` (seed {source['seed']}) forked at "
            f"its stage 2 under each recipe's cRT stage 2 for {args.dataset} (`tailshift fork`), its stage 1 "
            f"untouched. Final epoch of each; {args.threads} thread(s) per fork on {cpu_model()}, "
            f"{os.cpu_count()} cores, shared with other runs.")
    write_report(args.out, "crt_stage2", "cRT's stage 2 under each recipe, one representation", note, lines,
                 {"source": str(Path(args.run).resolve()), "source_fingerprint": source["fingerprint"],
                  "dataset": args.dataset, "rows": rows})


if __name__ == "__main__":
    main()
