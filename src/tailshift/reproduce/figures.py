"""Figures 1, 2, 3 (with 5, 11, 12), 4 and 7 of the paper, each one function behind ``tailshift reproduce figureN``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..cam import grad_cam, normalize_cam, upsample_cam
from ..config import build_config, read_yaml
from ..data.build import prepare_data
from ..data.sampling import Sampler, SamplerSpec
from ..engine import Trainer
from . import table1
from ..io import atomic_write_json
from .common import Job, aggregate, by_job, command_line, config_path, run_jobs, seed_list, seeds_note, write_outputs

GAMMAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _pick(datasets, mnist_root) -> list[str]:
    return datasets or table1.TABLE1.available_datasets(mnist_root)


def figure1(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """Accuracy vs gamma, where the sampling weight of (x, y) is n_y^-gamma (q = 1 - gamma in Eq. 2)."""
    datasets = _pick(datasets, mnist_root)
    jobs = []
    for d in datasets:
        root = [*table1.TABLE1.data_root(d, mnist_root)]
        for g in GAMMAS:
            for s in seed_list(seeds):
                jobs.append(Job(d, f"gamma{g}", s, f"table1/{d}_ce",
                                ("method.name=resample", f"method.params={{q: {1 - g}}}", f"seed={s}", "progress=false",
                                 f"output={out / 'runs' / d / f'gamma{g}' / f'seed{s}'}", *root, *overrides)))
    started = time.perf_counter()
    results = by_job(run_jobs(jobs, workers))
    wall = time.perf_counter() - started
    curves, table = {}, {}
    for d in datasets:
        table[d] = {}
        for g in GAMMAS:
            runs = [results[(d, f"gamma{g}", s)] for s in seed_list(seeds)]
            values = [{"diverged": True} if r["diverged"] else r["heads"]["main"] for r in runs]
            table[d][g] = aggregate(values)
        curves[d] = {"mean": [table[d][g]["all"]["mean"] for g in GAMMAS], "std": [table[d][g]["all"]["std"] for g in GAMMAS]}
    plots.accuracy_vs_gamma(curves, GAMMAS, out / "figure1.png", "Re-sampling weight vs accuracy (Figure 1)")
    lines = ["# Figure 1: accuracy vs gamma", "",
             f"Power sampler, i.i.d. draws with class probability n_k^(1-gamma) / sum, N draws per epoch; mean ± std over "
             f"{seeds_note(seeds)}. {len(jobs)} runs, {workers} worker processes, wall time {wall:.0f} s.", "",
             "| Dataset | " + " | ".join(f"γ={g}" for g in GAMMAS) + " |", "|---|" + "---|" * len(GAMMAS)]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(_cell(table[d][g]) for g in GAMMAS) + " |")
    write_outputs(out, "figure1", "\n".join(lines) + "\n", {"table": {d: {str(g): v for g, v in t.items()} for d, t in table.items()}})
    print("\n".join(lines))
    return table


def _cell(agg: dict) -> str:
    """mean ± std of the healthy runs, with diverged / collapsed counts when there are any."""
    text = "-" if agg["all"]["mean"] is None else f"{agg['all']['mean']:.1f} ± {agg['all']['std']:.1f}"
    if agg["diverged"] or agg["collapsed"]:
        text += f" ({agg['diverged']} diverged, {agg['collapsed']} collapsed)"
    return text


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
    root = [*table1.TABLE1.data_root(dataset, mnist_root)]
    panels, summary = {}, {}
    started = time.perf_counter()
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
    atomic_write_json(out / "figure2.json", {"dataset": dataset, "test_all": summary, "command": command_line(),
                                             "wall_seconds": round(time.perf_counter() - started, 1)})
    return summary


def figure4(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """Grey vs coloured twin: CE / cRT / CB-RS / CSA bars, from the Table 1 grid (written beside)."""
    found = _pick(datasets, mnist_root)
    grid = table1.TABLE1
    table = grid.run(found, seeds, workers, out, overrides, methods or [r.name for r in grid.rows], mnist_root=mnist_root)
    bars = ("ce", "crt", "cbrs", "csa")
    labels = {r.name: r.label for r in grid.rows}
    values = {d: {labels[row]: (agg["all"]["mean"] or np.nan, agg["all"]["std"] or 0.0)
                  for row, agg in rows.items() if row in bars} for d, rows in table.items()}
    plots.grouped_bars(values, out / "figure4.png", "Grey vs coloured context (Figure 4)")
    return table


def figure7(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> Path:
    """A grid of coloured-context training samples (CMNIST-LT, or CFashion-LT without MNIST)."""
    coloured = [d for d in _pick(datasets, mnist_root) if d.startswith("c")]
    dataset = coloured[0]
    root = [*table1.TABLE1.data_root(dataset, mnist_root)]
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


#: figure 3's models: run config suffix -> (column title, the head whose Grad-CAM is drawn)
FIGURE3_MODELS = {"ce": ("CE", "main"), "cbrs": ("CB-RS", "main"), "csa": ("CSA", "balanced")}
FIGURE3_LAMBDAS = (0.25, 0.5, 0.75, 1.0)


def _figure3_samples(data, rng: np.random.Generator, classes_per_group: int = 2, per_class: int = 2) -> list[dict]:
    """``per_class`` training images of a few head and a few tail classes, all drawn by ``rng``;
    only images whose label is not label noise, so the true-class CAM means something."""
    counts = data.class_counts
    by_size = np.argsort(-counts, kind="stable")
    picked = []
    for group, fallback in (("many", by_size[:classes_per_group]), ("few", by_size[::-1][:classes_per_group])):
        members = data.groups.get(group, np.array([], dtype=np.int64))
        pool = members if len(members) else fallback
        chosen = np.sort(rng.choice(pool, size=min(classes_per_group, len(pool)), replace=False))
        picked += [(int(c), group) for c in chosen]
    samples = []
    for c, group in picked:
        members = np.flatnonzero((data.train.labels == c) & (data.clean_labels == c))
        for i in np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)):
            samples.append({"index": int(i), "label": c, "group": group, "class_count": int(counts[c])})
    return samples


def _grad_cams(trainer: Trainer, head_name: str, index: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upsampled, min-max normalised Grad-CAMs (N x H x W) of the true class, its probability and
    whether the map is all zero, for training images ``index`` (no augmentation), in eval mode."""
    method, arrays = trainer.method, trainer.train_arrays
    backbone, head = method.backbone, method.heads()[head_name]
    x, y = arrays.normalise(arrays.images[index]), arrays.labels[index]
    method.eval()
    with torch.no_grad():
        cam, logits = grad_cam(backbone.feature_map(x), lambda a: head(backbone.embed(a)), y)
    up = upsample_cam(normalize_cam(cam), x.shape[-2:])[:, 0]
    prob = logits.softmax(dim=1).gather(1, y.view(-1, 1))[:, 0]
    flat = cam.flatten(1).amax(dim=1) <= 0  # no channel with a positive weight: the map is all zero
    return up.cpu().numpy(), prob.cpu().numpy(), flat.cpu().numpy()


def context_shift_example(trainer: Trainer, n_show: int, lambdas, seed: int = 0) -> tuple[list, dict, dict]:
    """One step of CSA's context shift with the trained model: masks of uniform batches from the
    uniform head, confident samples into a context bank (batch-sized, as in training) until it is
    full, ``n_show`` contexts drawn and fused into a class-balanced batch at each lambda."""
    method, cfg, arrays = trainer.method, trainer.cfg, trainer.train_arrays
    labels, batch = trainer.data.train.labels, cfg.train.batch_size
    uniform = Sampler(labels, SamplerSpec("shuffle"), seed, "figure3/uniform").epoch_indices(0)
    balanced = Sampler(labels, SamplerSpec("class_aware", per_class=cfg.sampling.per_class), seed,
                       "figure3/balanced").epoch_indices(0)[:batch]
    # Columns: the batch's first image of each class, by class (a class-aware batch repeats each
    # class per_class times in a row), then further images if there are fewer classes than columns.
    batch_labels = labels[balanced]
    firsts = [int(np.flatnonzero(batch_labels == c)[0]) for c in np.unique(batch_labels)]
    rest = [i for i in range(len(balanced)) if i not in set(firsts)]
    shown = balanced[(firsts + rest)[:n_show]]
    bal = arrays.batch(torch.from_numpy(shown))
    x_bal, y_bal = bal.x, bal.y
    uniform_batches = ((b.x, b.y) for b in (arrays.batch(torch.from_numpy(uniform[start:start + batch]))
                                            for start in range(0, len(uniform), batch)))
    shift = method.show_fused_batch(uniform_batches, x_bal, lambdas, torch.Generator().manual_seed(seed))
    rows = plots.context_shift_rows(shift.contexts, shift.masks, x_bal, shift.fused, cfg.data.mean, cfg.data.std,
                                    mask_label=f"background mask\nM = (1 - CAM)^{method.params.mask_power:g}")
    balanced_row = next(i for i, (label, _) in enumerate(rows) if label.startswith("balanced"))
    captions = {balanced_row: [f"class {int(c)}" for c in y_bal.cpu()]}
    info = {
        "uniform_images_scanned": shift.uniform_images_scanned,
        "bank_entries": shift.bank_entries,
        "bank_capacity": shift.bank_capacity,
        "delta": method.params.delta,
        "mask_power": method.params.mask_power,
        "lambdas": list(lambdas),
        "balanced_indices": shown.tolist(),
        "balanced_labels": y_bal.cpu().tolist(),
    }
    return rows, captions, info


def figure3(datasets, seeds, workers, out: Path, overrides, mnist_root, methods=None) -> dict:
    """Grad-CAM of the true class under CE, CB-RS and CSA on a coloured set (Figures 3, 11, 12), and one
    batch of CSA's context shift (Figure 5). Seed 0, trained in this process; ``seeds``/``workers`` unused."""
    coloured = [d for d in (datasets or ["cfashion-lt"]) if d.startswith("c")]
    if not coloured:
        raise ValueError(f"figure3 needs a coloured dataset (cfashion-lt or cmnist-lt), got {', '.join(datasets)}")
    dataset = coloured[0]
    root = [*table1.TABLE1.data_root(dataset, mnist_root)]
    out = Path(out)
    trainers, results, data = {}, {}, None
    started = time.perf_counter()
    for method in FIGURE3_MODELS:
        cfg = build_config(read_yaml(config_path(f"table1/{dataset}_{method}")),
                           ["seed=0", f"output={out / 'runs' / method}", *root, *overrides])
        if data is None or cfg.data != data_cfg:
            data, data_cfg = prepare_data(cfg.data), cfg.data
        trainer = Trainer(cfg, data)
        metrics = trainer.fit()
        trainers[method] = trainer
        results[method] = {"head": metrics["default_head"],
                           "test": {k: metrics["result"][k] for k in ("all", "many", "med", "few")}}

    samples = _figure3_samples(data, np.random.default_rng(0))
    index = torch.tensor([s["index"] for s in samples])
    first = trainers["ce"]
    images = first.train_arrays.images[index.to(first.device)].cpu().numpy()
    cams, captions = {}, {}
    for method, (title, head_name) in FIGURE3_MODELS.items():
        trainer = trainers[method]
        cam, prob, flat = _grad_cams(trainer, head_name, index.to(trainer.device))
        column = f"{title} ({results[method]['test']['all']:.1f}%)"
        cams[column] = cam
        captions[column] = [f"p(y) = {p:.2f}" + (", CAM = 0" if f else "") for p, f in zip(prob, flat)]
        results[method].update({"cam_head": head_name, "p_true": [round(float(p), 4) for p in prob],
                                "cam_all_zero": flat.tolist()})
    row_labels = [f"class {s['label']} ({s['group']})\nn = {s['class_count']}\ntrain #{s['index']}" for s in samples]
    cam_path = plots.cam_grid(images, cams, row_labels, out / "figure3.png",
                              f"Grad-CAM of the true class on {dataset} training images (Figures 3, 11, 12)", captions)

    rows, row_captions, bank_info = context_shift_example(trainers["csa"], 10, FIGURE3_LAMBDAS)
    bank_path = plots.image_rows(rows, out / "figure3_bank.png",
                                 f"CSA context shift on {dataset}: contexts from the uniform head, fused into a "
                                 "class-balanced batch (Figure 5)", captions=row_captions)

    summary = {"dataset": dataset, "seed": 0, "overrides": list(overrides), "command": command_line(),
               "wall_seconds": round(time.perf_counter() - started, 1), "samples": samples,
               "models": results, "context_shift": bank_info,
               "figures": [str(cam_path), str(bank_path)]}
    atomic_write_json(out / "figure3.json", summary)
    for method, r in results.items():
        print(f"{FIGURE3_MODELS[method][0]:6s} ({r['head']} head) test All {r['test']['all']:.2f}")
    print(f"wrote {cam_path}, {bank_path} and {out / 'figure3.json'}")
    return summary
