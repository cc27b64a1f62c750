"""The figures drawn from seed-0 models trained in this process, or from the data: 2, 3 (with 5), 7, 10 and
11 (with 12) of the paper. Their commands are ``figure_commands``; Figures 1 and 9 are ``curves``, Figure 4
is in ``table1``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..cam import grad_cam, normalize_cam, upsample_cam
from ..config import config_path, load_config
from ..data.build import prepare_data
from ..engine import Trainer
from ..methods.context_shift import FIGURE3_LAMBDAS, context_shift_example
from ..resolve import resolve_run
from ..io import atomic_write_json
from .grid import Study
from .plan import overrides_for_run
from .reports import command_line
from .table1 import TABLE1


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


def draw_figure2(dataset: str, out: Path, overrides, mnist_root: str | None) -> dict:
    """2-d embeddings of train and test under uniform sampling (CE) and CB-RS (``figure2.png``)."""
    root = [*TABLE1.data_root(dataset, mnist_root)]
    panels, summary = {}, {}
    started = time.perf_counter()
    for method in ("ce", "cbrs"):
        cfg = load_config(config_path(f"table1/{dataset}_{method}"),
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


def draw_figure7(dataset: str, out: Path, overrides, mnist_root: str | None) -> Path:
    """A grid of coloured-context training samples (``figure7.png``)."""
    root = [*TABLE1.data_root(dataset, mnist_root)]
    cfg = load_config(config_path(f"table1/{dataset}_ce"), [*root, *overrides])
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


def _fit_models(config: str, extra, runs: Path, overrides) -> tuple[dict, dict, object]:
    """Seed 0 of each of ``FIGURE3_MODELS``' runs of ``config`` ("{run}" standing for the run), trained in this
    process (a finished run is re-read) in ``runs``/<run> on one copy of the data; ``RUN:key=value`` overrides
    reach only that run. Every run's config is checked before any trains (CSA's Grad-CAM refuses a readout that
    is not the patch grid), so a bad override fails in seconds, not after the first runs' training. Returns
    the trainers, their test results and the data."""
    resolved = {method: resolve_run(load_config(config_path(config.format(run=method)),
                                                ["seed=0", f"output={runs / method}", *extra,
                                                 *overrides_for_run(method, list(overrides), list(FIGURE3_MODELS))]))
                for method in FIGURE3_MODELS}
    trainers, results, data, data_cfg = {}, {}, None, None
    for method, run in resolved.items():  # a resolved run is not resolved again by its trainer
        if data is None or run.config.data != data_cfg:
            data, data_cfg = prepare_data(run.config.data), run.config.data
        trainer = Trainer(run, data)
        metrics = trainer.fit()
        trainers[method] = trainer
        results[method] = {"head": metrics["default_head"],
                           "test": {k: metrics["result"][k] for k in ("all", "many", "med", "few")}}
    return trainers, results, data


def _confident_tail(trainer: Trainer, rng: np.random.Generator, limit: int = 8) -> tuple[list[dict], int]:
    """Training images of the few-shot classes whose true-class probability under CSA's uniform head (the
    head whose Grad-CAM makes the masks, in eval mode) reaches delta, i.e. whose context would enter the bank
    (Figure 12): up to two of each class, rarest class first. Also how many few-shot images were scanned."""
    data, delta = trainer.data, trainer.method.params.delta
    counts = data.class_counts
    few = data.groups.get("few", np.array([], dtype=np.int64))
    scanned = np.flatnonzero(np.isin(data.train.labels, few))
    probs = [_grad_cams(trainer, "uniform", torch.from_numpy(scanned[i:i + 256]).to(trainer.device))[1]
             for i in range(0, len(scanned), 256)]
    passed = scanned[np.concatenate(probs) >= delta] if probs else scanned
    samples = []
    for c in sorted(few, key=lambda c: (counts[c], c)):
        if len(samples) == limit:
            break
        members = passed[data.train.labels[passed] == c]
        for i in np.sort(rng.choice(members, size=min(2, len(members), limit - len(samples)), replace=False)):
            samples.append({"index": int(i), "label": int(c), "group": "few", "class_count": int(counts[c])})
    return samples, len(scanned)


def _cam_panel(trainers: dict, results: dict, index: torch.Tensor, models: dict) -> tuple[dict, dict]:
    """Grad-CAM columns and captions of training images ``index`` under ``models`` (run -> (title, head));
    each run's result gets the CAM head, the true-class probabilities and which maps are all zero."""
    cams, captions = {}, {}
    for method, (title, head_name) in models.items():
        trainer = trainers[method]
        cam, prob, flat = _grad_cams(trainer, head_name, index.to(trainer.device))
        column = f"{title} ({results[method]['test']['all']:.1f}%)"
        cams[column], captions[column] = cam, _captions(prob, flat)
        results[method].update({"cam_head": head_name, "p_true": [round(float(p), 4) for p in prob],
                                "cam_all_zero": flat.tolist()})
    return cams, captions


def _captions(prob: np.ndarray, flat: np.ndarray) -> list[str]:
    return [f"p(y) = {p:.2f}" + (", CAM = 0" if f else "") for p, f in zip(prob, flat)]


def _row_labels(samples: list[dict]) -> list[str]:
    return [f"class {s['label']} ({s['group']})\nn = {s['class_count']}\ntrain #{s['index']}" for s in samples]


def _cam_figure(name: str, study: str, config: str, extra, runs: Path, out: Path, overrides, numbers: str,
                tail_figure: int | None = None) -> dict:
    """Grad-CAM of the true class under CE, CB-RS and CSA on head and tail training images (``name``.png), one
    batch of CSA's context shift (``name``_bank.png, Figure 5) and, with ``tail_figure`` N, the tail images
    whose contexts CSA would bank (``_confident_tail``, figureN.png); ``name``.json holds the numbers. ``numbers``: the paper's
    figures it stands for; ``config``: the runs' shipped configs, "{run}" standing for the run."""
    started = time.perf_counter()
    trainers, results, data = _fit_models(config, extra, runs, overrides)
    samples = _figure3_samples(data, np.random.default_rng(0))
    index = torch.tensor([s["index"] for s in samples])
    first = trainers["ce"]
    images = first.train_arrays.images[index.to(first.device)].cpu().numpy()
    cams, captions = _cam_panel(trainers, results, index, FIGURE3_MODELS)
    cam_path = plots.cam_grid(images, cams, _row_labels(samples), out / f"{name}.png",
                              f"Grad-CAM of the true class on {study} training images ({numbers})", captions)

    csa = trainers["csa"]
    rows, row_captions, bank_info = context_shift_example(csa.method, csa.training_images(), 10, FIGURE3_LAMBDAS)
    bank_path = plots.image_rows(rows, out / f"{name}_bank.png",
                                 f"CSA context shift on {study}: contexts from the uniform head, fused into a "
                                 "class-balanced batch (Figure 5)", captions=row_captions)
    summary = {"dataset": study, "seed": 0, "overrides": list(overrides), "command": command_line(),
               "wall_seconds": None, "samples": samples, "models": results, "context_shift": bank_info,
               "figures": [str(cam_path), str(bank_path)]}
    if tail_figure:
        tail = summary["tail_above_delta"] = _tail_figure(trainers["csa"], out / f"figure{tail_figure}.png", study,
                                                          tail_figure)
        summary["figures"] += [tail["figure"]] if tail["figure"] else []
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / f"{name}.json", summary)
    for method, r in results.items():
        print(f"{FIGURE3_MODELS[method][0]:6s} ({r['head']} head) test All {r['test']['all']:.2f}")
    print(f"wrote {', '.join(summary['figures'])} and {out / f'{name}.json'}")
    return summary


def _tail_figure(csa: Trainer, path: Path, study: str, number: int) -> dict:
    """The Grad-CAMs of ``_confident_tail``'s images under CSA's uniform head (no PNG when none reaches delta)."""
    delta = csa.method.params.delta
    samples, scanned = _confident_tail(csa, np.random.default_rng(0))
    info = {"delta": delta, "few_images_scanned": scanned, "samples": samples, "figure": None}
    if not samples:
        print(f"no few-shot training image reaches delta = {delta:g} under CSA's uniform head: no {path.name}")
        return info
    index = torch.tensor([s["index"] for s in samples], device=csa.device)
    cam, prob, flat = _grad_cams(csa, "uniform", index)
    info.update(p_true=[round(float(p), 4) for p in prob], cam_all_zero=flat.tolist())
    column = "CSA uniform head"
    info["figure"] = str(plots.cam_grid(
        csa.train_arrays.images[index].cpu().numpy(), {column: cam}, _row_labels(samples), path,
        f"Tail-class training images of {study} with p(y) >= delta = {delta:g} under CSA's uniform head:\n"
        f"Grad-CAM of the true class (Figure {number})", {column: _captions(prob, flat)}))
    return info


def draw_figure3(dataset: str, out: Path, overrides, mnist_root: str | None) -> dict:
    """Grad-CAM of the true class under CE, CB-RS and CSA on a coloured LeNet set (Figure 3's question where
    the context is known), and one batch of CSA's context shift (Figure 5). Seed 0, trained in this process."""
    return _cam_figure("figure3", dataset, f"table1/{dataset}_{{run}}", TABLE1.data_root(dataset, mnist_root),
                       out / "runs", out, overrides, "Figures 3, 11, 12")


def draw_figure11(study: Study, out: Path, overrides) -> dict:
    """Grad-CAM on CIFAR-LT under CE, CB-RS and CSA (Figure 11: head and tail training images), the tail images
    whose CSA uniform-head probability reaches delta (figure12.png, Figure 12) and one batch of CSA's context
    shift; the Table 2 configs, seed 0, trained in this process."""
    return _cam_figure("figure11", study.name, study.config, study.overrides, out / "runs" / study.folder, out,
                       overrides, "Figure 11", tail_figure=12)


def _principal_plane(points: np.ndarray) -> np.ndarray:
    """The points on their first two principal components (the paper does not say how it drew Figure 10)."""
    centred = points - points.mean(axis=0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T


def draw_figure10(study: Study, out: Path, overrides) -> dict:
    """2-d representation of CIFAR-LT test features under CE, CB-RS and CSA (Figure 10): the backbone's
    embedding on its first two principal components, a colour per class, darker the more training images it
    has (as the paper). The runs are figure11's: the same --output trains them once."""
    started = time.perf_counter()
    trainers, results, data = _fit_models(study.config, study.overrides, out / "runs" / study.folder, overrides)
    rank = np.argsort(np.argsort(-data.class_counts, kind="stable"), kind="stable")  # 0: the most images
    panels = {}
    for method, (title, _) in FIGURE3_MODELS.items():
        points, labels = _embed(trainers[method], trainers[method].test_arrays, limit=len(data.test.labels))
        panels[f"{title}: test, acc {results[method]['test']['all']:.1f}%"] = (_principal_plane(points), rank[labels])
    path = plots.embeddings(panels, data.num_classes, out / "figure10.png",
                            f"Test features on {study.name}, first two principal components (Figure 10)",
                            colour_label="class by training count (dark: head, light: tail)")
    summary = {"dataset": study.name, "seed": 0, "overrides": list(overrides), "command": command_line(),
               "wall_seconds": round(time.perf_counter() - started, 1), "models": results,
               "projection": "first two principal components of the backbone embedding", "figure": str(path)}
    atomic_write_json(out / "figure10.json", summary)
    print(f"wrote {path} and {out / 'figure10.json'}")
    return summary
