"""Table 3: ImageNet-LT with ResNet-10 and ResNet-50 from scratch (CE, cRT, CB-RS, CSA).

Each row is one shipped config ``table3/imagenet-lt_<run>_<model>`` and one head of that
run. The images are streamed from ``data.root``; a run of 90 epochs is a multi-GPU job,
so ``nproc`` > 1 runs each config with torchrun on that many processes, one after the other.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import build_config, read_yaml
from ..data.build import prepare_data
from . import table1
from .common import (Job, config_path, overrides_for_run, paper_numbers, pick_rows, run_jobs, run_jobs_distributed,
                     runs_note, seed_list, seeds_note, write_outputs)

MODELS = {"resnet10": "ResNet-10", "resnet50": "ResNet-50"}
#: table row -> (run config, head of that run); CE is stage 1 of the cRT run
ROWS = {"ce": ("crt", "ce"), "crt": ("crt", "crt"), "cbrs": ("cbrs", "main"), "csa": ("csa", "balanced"),
        "csa-uniform": ("csa", "uniform"), "csa-ensemble": ("csa", "ensemble")}
DEFAULT_ROWS = ("ce", "crt", "cbrs", "csa")
ROW_NAMES = {"ce": "CE", "crt": "cRT", "cbrs": "CB-RS", "csa": "CSA", "csa-uniform": "CSA (uniform head)",
             "csa-ensemble": "CSA (ensemble)"}
PAIRED = {"csa": ("ce", "crt", "cbrs")}
#: the paper's rows we do not run, as it names them
OTHER_ROWS = {"focal-loss": "Focal Loss", "oltr": "OLTR", "fsa": "FSA", "lws": "LWS", "bbn": "BBN",
              "cmo-100-epochs": "CMO (100 epochs)", "csa-100-epochs": "CSA (100 epochs)"}


def jobs_for(models: list[str], seeds, out: Path, overrides: list[str], rows: dict) -> list[Job]:
    runs = sorted({run for run, _ in rows.values()})
    return [Job(f"{model}/{run}/seed{s}", f"table3/imagenet-lt_{run}_{model}",
                [f"seed={s}", f"output={out / 'runs' / model / run / f'seed{s}'}", "progress=false",
                 *overrides_for_run(run, overrides, runs)])
            for model in models for run in runs for s in seed_list(seeds)]


def other_rows_markdown(paper: dict) -> str:
    lines = ["", "## The paper's other rows", "", "| Method | ResNet-10 All | ResNet-50 All | Many | Med | Few |",
             "|---|---|---|---|---|---|"]
    for key, name in OTHER_ROWS.items():
        r10 = paper["resnet10"].get(key, [None] * 4)
        r50 = paper["resnet50"].get(key, [None] * 4)
        cells = [r10[0], *r50]
        lines.append(f"| {name} | " + " | ".join("-" if x is None else f"{x:.1f}" for x in cells) + " |")
    t1 = paper["table1"]
    lines += ["", "Paper Table 1, ImageNet-LT column (backbone not stated), All / Many / Med / Few: "
              + "; ".join(f"{ROW_NAMES[k]} {' / '.join(f'{x:.1f}' for x in v)}" for k, v in t1.items()) + "."]
    return "\n".join(lines) + "\n"


def run(models: list[str] | None, seeds, workers: int, out: Path, overrides: list[str],
        methods: list[str] | None = None, nproc: int = 1) -> dict:
    rows = pick_rows(methods, ROWS, DEFAULT_ROWS, "Table 3")
    models = models or list(MODELS)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown Table 3 backbone {unknown[0]!r}; known: {', '.join(MODELS)}")
    jobs = jobs_for(models, seeds, out, overrides, rows)
    # read the lists and find every image once, before any run starts (a missing image is one line here)
    prepare_data(build_config(read_yaml(config_path(jobs[0].config)), jobs[0].overrides).data)
    started = time.perf_counter()
    results = run_jobs(jobs, workers) if nproc == 1 else run_jobs_distributed(jobs, nproc)
    wall = time.perf_counter() - started
    table = table1.collect(results, models, seeds, rows)
    numbers = paper_numbers()["table3"]
    note = (f"Mean ± std (sample) over {seeds_note(seeds)}; diverged and collapsed runs are counted and left out. "
            f"{nproc} process(es) per run. Paper: {numbers['source']}. {runs_note(results, workers, wall)}")
    pairs = table1.paired(results, models, seeds, rows, PAIRED)
    paper = {m: {row: numbers[m].get(row) for row in rows} for m in models}
    md = table1.markdown(table, paper, "Table 3: ImageNet-LT", note, ROW_NAMES, pairs) + other_rows_markdown(numbers)
    write_outputs(out, "table3", md, {"table": table, "paired": pairs, "runs": results, "wall_seconds": wall,
                                      "seeds": seed_list(seeds), "nproc": nproc, "overrides": overrides})
    print(md)
    return table
