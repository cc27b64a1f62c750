"""cRT's stage 2 under each recipe on one finished representation: how much of a cRT gap its stage 2 explains.

The paper's cRT figure for CIFAR-LT comes from another code base than the CSA release whose stage 2 the
shipped configs use (10 epochs at a constant 0.2, the classifier going on from stage 1's). This forks
(``tailshift fork``) a finished cRT run at its stage 2 under the other stage-2 recipes shipped in
``configs/_base_/recipes`` for the run's dataset (Kang et al.'s, MiSLAS's), each on the same frozen
representation, and prints All / Many / Med / Few of each beside the run's own two heads (its stage-1 CE
head and its cRT). Then it forks the run into the other decoupled methods of Table 2's shipped configs (LWS,
tau-norm) as those configs run their later stage: the same CE stage 1, so each fork is the shipped config's
whole run (the table says whether the fingerprints agree). Stage 2 is minutes where stage 1 is hours.

    python benchmarks/crt_stage2.py RUN --runs-dir /tmp/forks --out benchmarks/results/table2_cifar10-lt_200ep
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from report import cpu_model, write_report

from tailshift.config import config_path, load_config, plain
from tailshift.fork import fork_run
from tailshift.methods import METHODS
from tailshift.reproduce.table2 import DATASETS, RECIPES, stage2_overrides
from tailshift.resolve import resolve_run

GROUPS = ("all", "many", "med", "few")
#: the other decoupled classifiers of Table 2's shipped configs, each forked as its config runs its later stage
SHIPPED_METHODS = ("lws", "tau-norm")


def stage2_recipes(dataset: str) -> dict[str, tuple[str, ...]]:
    """Each recipe with its own cRT stage 2 on ``dataset``, by name, as overrides."""
    return {name: stage2_overrides(name, dataset, "crt") for name in RECIPES
            if stage2_overrides(name, dataset, "crt")}


def shipped_method_overrides(dataset: str, method: str) -> tuple[str, ...]:
    """A fork into ``method`` as the shipped ``table2/<dataset>_<method>`` config runs its later stage."""
    params = plain(resolve_run(load_config(config_path(f"table2/{dataset}_{method}"))).params)
    return (f"method.name={method}", *(f"method.params.{name}={json.dumps(params[name])}"
                                       for name in METHODS.get(method).fork_params if name in params))


def shipped_fingerprint(dataset: str, method: str, source: dict) -> str:
    """The fingerprint of the shipped config's run with the source run's seed and imbalance ratio."""
    rho = source["config"]["data"]["longtail"]["rho"]
    return resolve_run(load_config(config_path(f"table2/{dataset}_{method}"),
                                   [f"seed={source['seed']}", f"data.longtail.rho={rho}"])).fingerprint()


def row(label: str, result: dict, seconds: float | None, changes: str, shipped: bool | None = None) -> dict:
    return {"stage 2": label, **{g: result[g] for g in GROUPS}, "seconds": seconds, "overrides": changes,
            "same_run_as_shipped_config": shipped}


def fork_row(label: str, run: str, folder: Path, overrides: tuple[str, ...], threads: int,
             shipped_fingerprint: str | None = None) -> dict:
    """The fork's row; with ``shipped_fingerprint``, whether the fork is that shipped config's run."""
    forked = fork_run(run, folder, [*overrides, f"threads={threads}", "progress=false"])
    retrain = [r["seconds"] for r in forked["curve"] if r["stage"] == "retrain"]
    shipped = None if shipped_fingerprint is None else forked["fingerprint"] == shipped_fingerprint
    return row(label, forked["heads"][forked["default_head"]], sum(retrain) if retrain else None,
               " ".join(overrides), shipped)


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
                sum(r["seconds"] for r in source["curve"] if r["stage"] == "retrain"), "-",
                source["fingerprint"] == shipped_fingerprint(args.dataset, "crt", source))]
    for name, overrides in stage2_recipes(args.dataset).items():
        rows.append(fork_row(name, args.run, Path(args.runs_dir) / name, overrides, args.threads))
    for method in SHIPPED_METHODS:
        rows.append(fork_row(f"{method}, as the shipped config runs it", args.run, Path(args.runs_dir) / method,
                             shipped_method_overrides(args.dataset, method), args.threads,
                             shipped_fingerprint(args.dataset, method, source)))

    def cell(value):
        return "-" if value is None else f"{value:.1f}"

    same = {None: "-", True: "yes", False: "no"}
    lines = ["| Stage 2 | All | Many | Med | Few | Stage-2 wall (s) | The shipped config's run | Overrides |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage 2']} | {' | '.join(cell(r[g]) for g in GROUPS)} | {cell(r['seconds'])} | "
              f"{same[r['same_run_as_shipped_config']]} | "
              f"{r['overrides'] if r['overrides'] == '-' else '`' + r['overrides'] + '`'} |" for r in rows]
    note = (f"One representation, several classifiers: the cRT run in `{args.run}` (seed {source['seed']}) forked at "
            f"its stage 2 under each recipe's cRT stage 2 for {args.dataset} (`tailshift fork`), its stage 1 "
            f"untouched. Final epoch of each; {args.threads} thread(s) per fork on {cpu_model()}, "
            f"{os.cpu_count()} cores, shared with other runs.")
    write_report(args.out, "crt_stage2", "Decoupled classifiers on one representation: cRT's stage 2 under each "
                 "recipe, LWS and tau-norm", note, lines,
                 {"source": str(Path(args.run).resolve()), "source_fingerprint": source["fingerprint"],
                  "dataset": args.dataset, "rows": rows})


if __name__ == "__main__":
    main()
