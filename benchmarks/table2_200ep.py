"""The evidence study: Table 2's CIFAR-10-LT (rho 100) rows at the paper's full schedule on this CPU.

Each row's run is one ``tailshift reproduce table2`` invocation on one thread, ``--slots`` of them at
once, started in the issue's order of priority; all share one ``--runs-dir`` (keep it outside any
checkout), so the same command resumes every unfinished run from its last epoch (a finished run is
re-scored, not retrained). After each run ends the combined table is rebuilt, and ``--publish DIR``
copies it with every run's curve, its wall and CPU time, the command and the CPU model into DIR
(``benchmarks/results/table2_cifar10-lt_200ep`` of a checkout, to be committed). ``--publish-only``
refreshes DIR from the runs as they stand, unfinished ones included, without training.

A session's machine may be gone by the next session, and its runs with it. ``--carry DIR`` keeps each
unfinished run's last checkpoint (and config) in DIR (a folder of the checkout, committed at the end of a
session): publishing refreshes it, and training first restores any run whose carried checkpoint is ahead
of its folder, so a new machine resumes from the last carried epoch, exactly, instead of from epoch 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from report import cpu_model

from tailshift.io import LOCK_NAME

#: run -> the Table 2 rows read from it, in the issue's order of priority (LDAM-DRW third: its authors' recipe
#: has landed), with one diagnostic run: CE and its cRT again on Cao et al.'s recipe, the code the paper's CE
#: figure comes from, so that CE's gap to the paper can be told apart from the recipe's
RUNS = {
    "crt": ("ce", "crt"),
    "csa": ("csa", "csa-uniform", "csa-ensemble"),
    "ldam-drw": ("ldam-drw",),
    "crt-ldam": ("ce", "crt"),
    "cbrs": ("cbrs",),
    "la": ("la",),
}
#: the runs trained off the shipped configs' recipe (the CSA release's), on their authors' (``--recipe``);
#: such a run lives in a folder of its recipe, under the name ``tailshift reproduce`` gives it (``FOLDERS``)
RECIPES = {"ldam-drw": "ldam", "crt-ldam": "ldam"}
FOLDERS = {"crt-ldam": "crt"}
STUDY = "cifar10-lt-rho100"
SEED = 0
DATA_CAVEAT = ("CIFAR-10 here is the JPEG-decoded copy in ../shared/data (median PSNR 30.5 dB against the "
               "original pixels), not the official pickles: every row moves, so compare rows' differences, "
               "not only their levels.")


#: the differences between rows that the study is to set beside the paper's (issue 23, point 4): label, then the
#: (recipe, row) minuend and subtrahend; "shared" is the shipped configs' recipe (``table2.json``), another
#: recipe's rows are in ``table2_<recipe>.json``
GAPS = (
    ("cRT − CE", ("shared", "crt"), ("shared", "ce")),
    ("CSA − CE", ("shared", "csa"), ("shared", "ce")),
    ("CSA − cRT", ("shared", "csa"), ("shared", "crt")),
    ("LDAM-DRW − CE, both on Cao et al.'s recipe", ("ldam", "ldam-drw"), ("ldam", "ce")),
    ("CE on Cao et al.'s recipe − CE on the CSA release's", ("ldam", "ce"), ("shared", "ce")),
)


def table_stem(recipe: str) -> str:
    """The name ``rebuild_table`` gives a recipe's table (``.md`` / ``.json``)."""
    return "table2" if recipe == "shared" else f"table2_{recipe}"


def reproduce_command(runs_dir: Path, rows: list[str], recipe: str = "shared") -> list[str]:
    return [sys.executable, "-m", "tailshift", "reproduce", "table2", "--datasets", "cifar10-lt", "--rhos", "100",
            "--seeds", f"{SEED}-{SEED}", "--workers", "1", "--methods", ",".join(rows), "--recipe", recipe,
            "--output", str(runs_dir)]


def run_folder(runs_dir: Path, run: str) -> Path:
    recipe = (RECIPES[run],) if run in RECIPES else ()
    return runs_dir.joinpath("runs", STUDY, *recipe, FOLDERS.get(run, run), f"seed{SEED}")


def finished(runs_dir: Path, run: str) -> bool:
    return (run_folder(runs_dir, run) / "metrics.json").exists()


#: what a run folder needs to resume; curve.json is rewritten from the checkpoint's own history. A finished
#: run keeps its metrics.json too, so that a new machine re-scores it into the table instead of training it again
CARRIED = ("checkpoint.pt", "config.yaml")
FINISHED = "metrics.json"


def checkpoint_epochs(path: Path) -> int:
    """Epochs recorded in a checkpoint (0 if there is none)."""
    if not path.exists():
        return 0
    return len(torch.load(path, map_location="cpu", weights_only=False)["history"])


def carry_out(runs_dir: Path, runs: list[str], carry: Path) -> None:
    """Keep each run's checkpoint and config in ``carry``, and a finished run's metrics.json."""
    for run in runs:
        kept, folder = carry / run, run_folder(runs_dir, run)
        if not (folder / "checkpoint.pt").exists() or (kept / FINISHED).exists():  # none yet, or carried finished
            continue
        kept.mkdir(parents=True, exist_ok=True)
        for name in CARRIED + ((FINISHED,) if finished(runs_dir, run) else ()):
            shutil.copyfile(folder / name, kept / f"{name}.tmp")  # each written atomically (io), so a copy is whole
            (kept / f"{name}.tmp").replace(kept / name)


def carry_in(runs_dir: Path, runs: list[str], carry: Path, note) -> None:
    """Restore every unfinished run whose carried checkpoint holds more epochs than its folder's (a carried
    finished run comes back finished: re-scored, not trained)."""
    for run in runs:
        kept, folder = carry / run, run_folder(runs_dir, run)
        if finished(runs_dir, run) or not (kept / "checkpoint.pt").exists():
            continue
        carried, local = checkpoint_epochs(kept / "checkpoint.pt"), checkpoint_epochs(folder / "checkpoint.pt")
        if carried <= local:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for name in CARRIED + ((FINISHED,) if (kept / FINISHED).exists() else ()):
            shutil.copyfile(kept / name, folder / name)
        history = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["history"]
        (folder / "curve.json").write_text(json.dumps(history))
        (folder / LOCK_NAME).touch()  # the marker of a tailshift run folder (io.py), which the run then takes
        note(f"restored {run} at epoch {carried} from {kept} (its folder had {local})")


def rebuild_table(runs_dir: Path, runs: list[str]) -> None:
    """Re-score the finished runs (nothing is trained): those on the shipped recipe into ``table2.md`` /
    ``.json``, those on another recipe into ``table2_<recipe>.md`` / ``.json`` (``--recipe`` is one per table)."""
    by_recipe: dict[str, list[str]] = {}
    for run in runs:
        if finished(runs_dir, run):
            by_recipe.setdefault(RECIPES.get(run, "shared"), []).extend(RUNS[run])
    # Every recipe's rebuild writes table2.md before another recipe's is renamed: the shipped one goes last.
    for recipe, rows in sorted(by_recipe.items(), key=lambda item: item[0] == "shared"):
        subprocess.run(reproduce_command(runs_dir, rows, recipe), check=True, stdout=subprocess.DEVNULL)
        if recipe != "shared":
            for suffix in (".md", ".json"):
                (runs_dir / f"table2{suffix}").replace(runs_dir / f"{table_stem(recipe)}{suffix}")


def train(runs_dir: Path, runs: list[str], slots: int, publish: Path | None, carry: Path | None,
          log: Path) -> None:
    """Keep ``slots`` runs training, in priority order; rebuild (and publish) the table as each ends.
    A failed run, or a signal, stops the others too: they resume from their checkpoints."""
    running: dict[str, subprocess.Popen] = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with open(log, "a") as out:
        def note(line: str) -> None:
            out.write(f"{time.strftime('%F %T')} {line}\n")
            out.flush()

        if carry:
            carry_in(runs_dir, runs, carry, note)
        waiting = [r for r in runs if not finished(runs_dir, r)]
        try:
            while waiting or running:
                while waiting and len(running) < slots:
                    run = waiting.pop(0)
                    note(f"start {run}")
                    running[run] = subprocess.Popen(reproduce_command(runs_dir, list(RUNS[run]),
                                                                      RECIPES.get(run, "shared")), stdout=out,
                                                    stderr=out)
                time.sleep(30)
                for run, process in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[run]
                    note(f"{run} exited with {process.returncode}")
                    if process.returncode != 0:
                        raise SystemExit(f"run {run} failed (exit {process.returncode}); see {log}")
                    rebuild_table(runs_dir, runs)
                    if publish:
                        publish_results(runs_dir, runs, publish)
                    if carry:
                        carry_out(runs_dir, runs, carry)
        finally:
            for process in running.values():
                process.terminate()
            for process in running.values():
                process.wait()


def run_status(runs_dir: Path, run: str) -> dict:
    """A run's progress from its folder: epochs done, wall and CPU seconds so far, last test scores."""
    folder = run_folder(runs_dir, run)
    metrics_path, curve_path = folder / "metrics.json", folder / "curve.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        curve = metrics["curve"]
    elif curve_path.exists():
        metrics, curve = None, json.loads(curve_path.read_text())
    else:
        return {"run": run, "state": "not started"}
    tested = [r for r in curve if "test" in r]
    return {
        "run": run, "state": "finished" if metrics else "training",
        "epochs_done": len(curve),
        "epochs_by_stage": {s: sum(r["stage"] == s for r in curve) for s in dict.fromkeys(r["stage"] for r in curve)},
        "wall_seconds": round(sum(r["seconds"] for r in curve), 1),
        "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in curve), 1),
        "last_test": tested[-1]["test"] if tested else None,
        "last_tested_epoch": f"{tested[-1]['stage']} {tested[-1]['epoch']}" if tested else None,
    }


def row_gaps(dest: Path) -> list[dict]:
    """Each of ``GAPS`` whose two rows have finished, from the published tables: ours (final epoch's All) beside
    the paper's (its rows' All, where it prints both)."""
    from tailshift.reproduce.table2 import TABLE2

    study = TABLE2.studies(["cifar10-lt"], [100])
    paper = TABLE2.paper_rows(study)[study[0].name]
    tables = {}
    for recipe in ("shared", *dict.fromkeys(RECIPES.values())):
        path = dest / f"{table_stem(recipe)}.json"
        if path.exists():
            tables[recipe] = json.loads(path.read_text())["table"][study[0].name]

    def ours(recipe: str, row: str) -> float | None:
        entry = tables.get(recipe, {}).get(row)
        return entry["all"]["mean"] if entry else None

    gaps = []
    for label, a, b in GAPS:
        if ours(*a) is None or ours(*b) is None:
            continue
        paper_a, paper_b = paper[a[1]][0], paper[b[1]][0]
        # ours across two recipes has no counterpart in the paper, whose every row comes from one recipe
        paper_gap = paper_a - paper_b if a[0] == b[0] and None not in (paper_a, paper_b) else None
        gaps.append({"gap": label, "ours": round(ours(*a) - ours(*b), 2),
                     "paper": round(paper_gap, 2) if paper_gap is not None else None})
    return gaps


def publish_results(runs_dir: Path, runs: list[str], dest: Path) -> None:
    """Copy the table and every run's curve into ``dest`` and write ``study.md`` / ``study.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    for table in [*runs_dir.glob("table2.md"), *runs_dir.glob("table2.json"), *runs_dir.glob("table2_*.md"),
                  *runs_dir.glob("table2_*.json")]:
        shutil.copyfile(table, dest / table.name)
    statuses = [run_status(runs_dir, r) for r in runs]
    for run in runs:
        folder = run_folder(runs_dir, run)
        source = folder / "metrics.json" if finished(runs_dir, run) else folder / "curve.json"
        if source.exists():
            shutil.copyfile(source, dest / f"{run}_{source.name}")
    command = "python benchmarks/table2_200ep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    per_run = shlex.join(["tailshift", *reproduce_command(Path("RUNS_DIR"), ["ROWS"], "RECIPE")[3:]])
    record = {"command": command, "per_run_command": per_run, "recipes": {r: RECIPES.get(r, "shared") for r in runs},
              "cpu_model": cpu_model(), "cores": os.cpu_count(), "threads_per_run": 1,
              "data_caveat": DATA_CAVEAT, "runs": statuses, "gaps": row_gaps(dest)}
    (dest / "study.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Table 2 on CIFAR-10-LT (rho 100) at the full 200-epoch schedule, on a CPU", "",
             f"ResNet-32, the shipped `table2/cifar10-lt_*` configs unchanged, seed {SEED}, each run on one thread "
             f"of a {os.cpu_count()}-core `{record['cpu_model']}` at `nice 19` beside other work: wall time "
             "includes waiting for the CPU, CPU time does not. " + DATA_CAVEAT, "",
             "The results table (ours beside the paper's) is `table2.md` (the runs on Cao et al.'s recipe, "
             "LDAM-DRW and the CE/cRT diagnostic: `table2_ldam.md`), written by `tailshift reproduce table2` "
             "from the finished runs; each run's per-epoch curve is `<run>_metrics.json` (finished) or "
             "`<run>_curve.json` (still training).", "",
             "| Run | Rows | State | Epochs done | Wall (h) | CPU (h) | Last test All (head: value) |",
             "|---|---|---|---|---|---|---|"]
    for status in statuses:
        if status["state"] == "not started":
            lines.append(f"| {status['run']} | {', '.join(RUNS[status['run']])} | not started | - | - | - | - |")
            continue
        stages = ", ".join(f"{s} {n}" for s, n in status["epochs_by_stage"].items())
        last = status["last_test"] or {}
        tested = ", ".join(f"{h}: {v['all']:.1f}" for h, v in last.items()) or "-"
        lines.append(f"| {status['run']} | {', '.join(RUNS[status['run']])} | {status['state']} | {stages} | "
                     f"{status['wall_seconds'] / 3600:.2f} | {status['cpu_seconds'] / 3600:.2f} | "
                     f"{tested} ({status['last_tested_epoch']}) |")
    if record["gaps"]:
        lines += ["", "Differences between finished rows (All, final epoch), ours beside the paper's:", "",
                  "| Difference | Ours | Paper |", "|---|---|---|"]
        lines += [f"| {g['gap']} | {g['ours']:+.1f} | {'-' if g['paper'] is None else format(g['paper'], '+.1f')} |"
                  for g in record["gaps"]]
    lines += ["", f"Command: `{command}`; each run: `{record['per_run_command']}`"]
    (dest / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True, help="where the runs live (outside any checkout)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated of {','.join(RUNS)}, in order")
    parser.add_argument("--slots", type=int, default=2, help="runs trained at once, one thread each")
    parser.add_argument("--publish", type=Path, help="copy the results here after each run ends")
    parser.add_argument("--publish-only", action="store_true",
                        help="refresh --publish (and --carry) from the runs and exit")
    parser.add_argument("--carry", type=Path, help="keep unfinished runs' checkpoints here; restore from it first")
    parser.add_argument("--no-nice", action="store_true", help="do not lower this study's CPU priority")
    args = parser.parse_args(argv)
    runs = args.runs.split(",")
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    if args.slots < 1:
        parser.error(f"--slots must be at least 1, got {args.slots}")
    if args.publish_only:
        if not args.publish:
            parser.error("--publish-only needs --publish DIR")
        publish_results(args.runs_dir, runs, args.publish)
        if args.carry:
            carry_out(args.runs_dir, runs, args.carry)
        return
    if not args.no_nice:
        os.nice(19)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    train(args.runs_dir, runs, args.slots, args.publish, args.carry, args.runs_dir / "study.log")


if __name__ == "__main__":
    main()
