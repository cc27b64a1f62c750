"""Figures 1, 2, 4 and 7 of the paper, each one function behind ``tailshift reproduce figureN``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..config import build_config, read_yaml
from ..data.build import prepare_data
from ..engine import Trainer
from . import table1
from .common import Job, aggregate, config_path, run_jobs, write_outputs

GAMMAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _pick(datasets, mnist_root) -> list[str]:
    return datasets or table1.available_datasets(mnist_root)


def figure1(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """Accuracy vs gamma, where the sampling weight of (x, y) is n_y^-gamma (q = 1 - gamma in Eq. 2)."""
    datasets = _pick(datasets, mnist_root)
    jobs = []
    for d in datasets:
        root = [f"data.root={mnist_root}"] if mnist_root and table1.DATASETS[d] == "mnist" else []
        for g in GAMMAS:
            for s in range(seeds):
                jobs.append(Job(f"{d}/{g}/seed{s}", f"table1/{d}_ce",
                                ["method.name=resample", f"method.params={{q: {1 - g}}}", f"seed={s}", "progress=false",
                                 f"output={out / 'runs' / d / f'gamma{g}' / f'seed{s}'}", *root, *overrides]))
    results = {r["key"]: r for r in run_jobs(jobs, workers)}
    curves, table = {}, {}
    for d in datasets:
        table[d] = {}
        for g in GAMMAS:
            values = [{"diverged": True} if results[f"{d}/{g}/seed{s}"]["diverged"] else results[f"{d}/{g}/seed{s}"]["heads"]["main"]
                      for s in range(seeds)]
            table[d][g] = aggregate(values)
        curves[d] = {"mean": [table[d][g]["all"]["mean"] for g in GAMMAS], "std": [table[d][g]["all"]["std"] for g in GAMMAS]}
    plots.accuracy_vs_gamma(curves, GAMMAS, out / "figure1.png", "Re-sampling weight vs accuracy (Figure 1)")
    lines = ["# Figure 1: accuracy vs gamma", "",
             f"Power sampler, i.i.d. draws with class probability n_k^(1-gamma) / sum, N draws per epoch; mean ± std over {seeds} seeds.", "",
             "| Dataset | " + " | ".join(f"γ={g}" for g in GAMMAS) + " |", "|---|" + "---|" * len(GAMMAS)]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(
            f"{table[d][g]['all']['mean']:.1f} ± {table[d][g]['all']['std']:.1f}" if table[d][g]["all"]["mean"] is not None else "-"
            for g in GAMMAS) + " |")
    write_outputs(out, "figure1", "\n".join(lines) + "\n", {"table": {d: {str(g): v for g, v in t.items()} for d, t in table.items()}})
    print("\n".join(lines))
    return table


def _embed(trainer: Trainer, arrays, limit: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    trainer.method.eval()
    points, labels = [], []
    with torch.inference_mode():
        for batch in arrays.iterate(1000):
            points.append(trainer.method.backbone(batch.x).cpu().numpy())
            labels.append(batch.y.cpu().numpy())
    points, labels = np.concatenate(points), np.concatenate(labels)
    keep = np.random.default_rng(0).permutation(len(labels))[:limit]
    return points[keep], labels[keep]


def figure2(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """2-d embeddings of train and test under uniform sampling (CE) and CB-RS."""
    grey = [d for d in _pick(datasets, mnist_root) if not d.startswith("c")]
    dataset = grey[0]
    root = [f"data.root={mnist_root}"] if mnist_root and table1.DATASETS[dataset] == "mnist" else []
    panels, summary = {}, {}
    for method in ("ce", "cbrs"):
        cfg = build_config(read_yaml(config_path(f"table1/{dataset}_{method}")),
                           [f"output={out / 'runs' / method}", *root, *overrides])
        trainer = Trainer(cfg)
        metrics = trainer.fit()
        summary[method] = metrics["result"]["all"]
        name = {"ce": "uniform (CE)", "cbrs": "class-balanced (CB-RS)"}[method]
        panels[f"{name}: train"] = _embed(trainer, trainer.train_arrays)
        panels[f"{name}: test, acc {summary[method]:.1f}%"] = _embed(trainer, trainer.test_arrays)
    plots.embeddings(panels, 10, out / "figure2.png", f"2-d representations on {dataset} (Figure 2)")
    (out / "figure2.json").write_text(json.dumps({"dataset": dataset, "test_all": summary}, indent=1))
    return summary


def figure4(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """Grey vs coloured twin: CE / cRT / CB-RS / CSA bars, from the Table 1 grid (written beside)."""
    found = _pick(datasets, mnist_root)
    table = table1.run(found, seeds, workers, out, overrides, mnist_root, methods or list(table1.ROWS))
    values = {d: {table1.ROW_NAMES[row]: (agg["all"]["mean"] or np.nan, agg["all"]["std"] or 0.0)
                  for row, agg in rows.items()} for d, rows in table.items()}
    plots.grouped_bars(values, out / "figure4.png", "Grey vs coloured context (Figure 4)")
    return table


def figure7(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> Path:
    """A grid of coloured-context training samples (CMNIST-LT, or CFashion-LT without MNIST)."""
    coloured = [d for d in _pick(datasets, mnist_root) if d.startswith("c")]
    dataset = coloured[0]
    root = [f"data.root={mnist_root}"] if mnist_root and table1.DATASETS[dataset] == "mnist" else []
    cfg = build_config(read_yaml(config_path(f"table1/{dataset}_ce")), [*root, *overrides])
    data = prepare_data(cfg.data)
    rng = np.random.default_rng(0)
    rows = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.train.labels == c)
        rows.append(data.train.images[rng.choice(idx, size=10, replace=len(idx) < 10)])
    counts = data.class_counts
    labels = [f"class {c}\n(n={counts[c]})" for c in range(data.num_classes)]
    path = plots.image_grid(np.stack(rows), labels, out / "figure7.png", f"{dataset} training samples (Figure 7)")
    print(f"wrote {path}")
    return path
