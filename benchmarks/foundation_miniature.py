"""A miniature of LIFT's claim (issue 25), measured on a CPU: does lightweight fine-tuning of a pretrained
vision transformer beat full fine-tuning on the tail of a long-tailed set it has not seen?

No pretrained weights can be downloaded here, so the pretrained model is made here, with tailshift:

1. **Pretrain** a small timm ViT (patch 4 on 32 x 32, ``model.timm_args``) with CE on *balanced* CIFAR-10
   classes 0-4 (airplane, automobile, bird, cat, deer), and keep its run checkpoint.
2. **Fine-tune** it (``model.pretrained=<that checkpoint>``) on a long-tailed set of CIFAR-10 classes 5-9
   (dog, frog, horse, ship, truck, relabelled 0-4; exp profile, rho 100): images and classes the backbone
   never saw, with ``model.tune=full``, ``linear`` and ``adaptformer`` under CE, LA and CSA, each on
   ``--seeds`` seeds. Groups by index: Many = classes 0-1, Med = 2, Few = 3-4 (``data.group_bounds=[2,3]``).

Both sets are written as ``.npz`` files (read by the ``npz`` dataset) from the JPEG-decoded CIFAR-10 copy,
so accuracy is indicative only. Runs live under ``--runs`` (outside the repository); a run whose
``metrics.json`` exists is read, not retrained, so the same command resumes an interrupted study. Every run
is a ``tailshift train`` command (recorded in the results); here each runs in a child process through
``tests/conftest.py::import_real``, because PyPI's CUDA torchvision (imported by timm) does not import
beside this machine's CPU torch. One thread, niced.

    python benchmarks/foundation_miniature.py              # the study (about an hour on one core)
    python benchmarks/foundation_miniature.py --tiny       # a few steps of everything (the test's setting)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "foundation_miniature"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PRETRAIN_CLASSES, FINETUNE_CLASSES = tuple(range(5)), tuple(range(5, 10))
TUNES = ("full", "linear", "adaptformer")
METHODS = ("ce", "la", "csa")
GROUPS = ("all", "many", "med", "few")

#: the sizes of a study: images, epochs and the ViT (``tiny``: a few steps, for the test)
SETTINGS = {
    "study": {
        "vit": {"patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
        "pretrain_per_class": 5000, "pretrain_epochs": 6, "pretrain_test_per_class": 500,
        "finetune_n_max": 1000, "finetune_rho": 100, "finetune_epochs": 10, "finetune_test_per_class": 500,
        "csa_warmup_epochs": 2, "batch_size": 64,
    },
    "tiny": {
        "vit": {"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
        "pretrain_per_class": 20, "pretrain_epochs": 1, "pretrain_test_per_class": 4,
        "finetune_n_max": 20, "finetune_rho": 10, "finetune_epochs": 2, "finetune_test_per_class": 4,
        "csa_warmup_epochs": 1, "batch_size": 16,
    },
}


def source_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def write_split(source: dict, classes: tuple[int, ...], train_per_class: int | None, test_per_class: int,
                path: Path) -> Path:
    """``classes`` of ``source`` relabelled 0.. as an npz (the first images of each class, in file order)."""
    if path.exists():
        return path
    out = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        x, y = source[f"x_{split}"], source[f"y_{split}"]
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes])
        out[f"x_{split}"] = x[keep]
        out[f"y_{split}"] = np.searchsorted(np.array(classes), y[keep]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, class_names=np.array([CIFAR10[c] for c in classes]), **out)
    partial.replace(path)
    return path


def flow(mapping: dict) -> str:
    """A mapping as one YAML flow value for a ``key=value`` override."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def common_overrides(s: dict, npz: Path) -> list[str]:
    return [f"data.dataset=npz", f"data.root={npz}", "data.group_bounds=[2, 3]",
            "model.name=timm:vit_tiny_patch16_224", f"model.timm_args={flow(s['vit'])}",
            f"train.batch_size={s['batch_size']}", "train.test_batch_size=500", "train.eval_every=0",
            "train.optim.milestones=[]", "train.optim.schedule=cosine", "device=cpu", "progress=false", "threads=1"]


def pretrain_command(s: dict, npz: Path, out: Path) -> list[str]:
    """CE on the balanced classes 0-4, AdamW (the usual optimiser of a ViT trained from scratch)."""
    return ["train", "table2/cifar10-lt_ce", *common_overrides(s, npz), "data.longtail.profile=none",
            f"train.epochs={s['pretrain_epochs']}", f"train.optim.warmup_epochs={min(1, s['pretrain_epochs'] - 1)}",
            "train.optim.name=adamw", "train.optim.lr=0.001",
            "train.optim.weight_decay=0.05", "seed=0", f"output={out}"]


def finetune_command(s: dict, npz: Path, pretrained: Path, tune: str, method: str, seed: int, out: Path) -> list[str]:
    """LIFT's optimiser for every mode and method, full fine-tuning included (github.com/shijxcs/LIFT at 661ead9:
    SGD lr 0.01, momentum 0.9, weight decay 5e-4, ``configs/model/clip_vit_b16.yaml`` lines 13-18; cosine over
    the epochs, ``trainer.py`` lines 278-281), with one warm-up epoch and the rate set per step (LIFT: per
    epoch, no warm-up) and batch 64 rather than 128 (a set of 1,457 images)."""
    extra = [f"method.params.warmup_epochs={s['csa_warmup_epochs']}"] if method == "csa" else []
    return ["train", f"table2/cifar10-lt_{method}", *common_overrides(s, npz), "data.longtail.profile=exp",
            f"data.longtail.rho={s['finetune_rho']}", f"data.longtail.n_max={s['finetune_n_max']}", f"model.pretrained={pretrained}",
            f"model.tune={tune}", f"train.epochs={s['finetune_epochs']}", "train.optim.warmup_epochs=1", "train.optim.lr=0.01",
            "train.optim.momentum=0.9", "train.optim.weight_decay=5.0e-4", *extra, f"seed={seed}", f"output={out}"]


def run(args: list[str], log: Path, in_process: bool = False) -> dict:
    """``tailshift <args>`` in a child process (niced, one thread; ``in_process``: here, timm already importable)
    unless its metrics.json exists; its metrics."""
    out = Path(args[-1].split("=", 1)[1])
    metrics = out / "metrics.json"
    if not metrics.exists() and in_process:
        from tailshift.cli import main as tailshift_cli

        if tailshift_cli(args) != 0:
            raise SystemExit(f"tailshift {shlex.join(args)} failed")
    elif not metrics.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        with open(log, "a") as stream:
            stream.write(f"$ tailshift {shlex.join(args)}\n")
            stream.flush()
            done = subprocess.run(["nice", "-n", "5", sys.executable, __file__, "--tailshift", *args],
                                  stdout=stream, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise SystemExit(f"tailshift {shlex.join(args)} failed (exit {done.returncode}); see {log}")
    return json.loads(metrics.read_text())


def summary(values: list[float | None]) -> dict:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.mean(kept), 2), "std": round(statistics.stdev(kept), 2) if len(kept) > 1 else 0.0,
            "n": len(kept)}


def against_full(finetunes: dict, seeds: list[int]) -> list[dict]:
    """Per method and lightweight mode: its All and Few minus full fine-tuning's, paired by seed."""
    rows = []
    for method in METHODS:
        for tune in TUNES[1:]:
            row = {"method": method, "tune": tune}
            for group in ("all", "few"):
                diffs = [finetunes[(tune, method, seed)]["result"][group] - finetunes[("full", method, seed)]["result"][group]
                         for seed in seeds]
                row[group] = {"mean": round(statistics.mean(diffs), 2), "per_seed": [round(d, 2) for d in diffs],
                              "wins": sum(d > 0 for d in diffs)}
            rows.append(row)
    return rows


def cell(s: dict) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def render(report: dict) -> str:
    s = report["settings"]
    pre = report["pretrain"]
    seeds = len(report["seeds"])
    lines = [
        "# Foundation miniature: lightweight vs full fine-tuning of a pretrained ViT on an unseen long-tailed set",
        "",
        f"**Pretraining.** A timm ViT ({flow(s['vit'])}: {pre['parameters']:,} parameters) trained from scratch with "
        f"CE on balanced CIFAR-10 classes 0-4 (airplane, automobile, bird, cat, deer; {s['pretrain_per_class']} images "
        f"a class, {s['pretrain_epochs']} epochs, AdamW lr 1e-3, crop + flip) reaches {pre['result']['all']:.2f} on "
        f"{s['pretrain_test_per_class']} test images a class of those classes.",
        "",
        f"**Fine-tuning.** Its run checkpoint is `model.pretrained` for CIFAR-10 classes 5-9 (dog, frog, horse, ship, "
        f"truck, relabelled 0-4), long-tailed (exp, rho {s['finetune_rho']}: {pre['finetune_counts']} images), "
        f"{s['finetune_epochs']} epochs with LIFT's optimiser for every mode (SGD lr 0.01, momentum 0.9, weight "
        f"decay 5e-4, cosine), tested on {s['finetune_test_per_class']} images a class. Many = classes 0-1 (dog, "
        "frog), Med = 2 (horse), Few = 3-4 (ship, truck). CSA reports its balanced head "
        f"(`method.params.warmup_epochs={s['csa_warmup_epochs']}`, the rest as `table2/cifar10-lt_csa`).",
        "",
        "**Why this data.** The backbone must not have seen the fine-tuning classes, as a CLIP or ImageNet model has "
        "not seen a user's long-tailed set, yet the images must come from a distribution it can transfer from; the "
        "two halves of CIFAR-10 give both, on the one natural-image set this machine holds, read by tailshift's "
        "`npz` dataset (MNIST is not here, and from grey 28 x 28 garments, Fashion-MNIST, little would transfer to "
        "colour photographs). The copy is JPEG-decoded (not the official pixels): accuracy is indicative only.",
        "",
        f"Mean ± std over {seeds} seeds ({', '.join(map(str, report['seeds']))}); the pretrained backbone is the "
        "same for every seed.",
        "",
        "| tune | method | trainable params | All | Many | Med | Few | reported head untrained | train s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['tune']} | {row['method']} | {row['trainable_parameters']:,} | "
                     + " | ".join(cell(row[g]) for g in GROUPS)
                     + f" | {row['untrained_runs']} of {seeds} | {row['train_seconds_mean']:.0f} |")
    lines += ["", "Lightweight minus full fine-tuning, paired by seed (mean; seeds where the lightweight mode is higher):",
              "", "| method | tune | All | Few |", "|---|---|---|---|"]
    for row in report["against_full"]:
        lines.append(f"| {row['method']} | {row['tune']} | "
                     + " | ".join(f"{row[g]['mean']:+.1f} ({row[g]['wins']} of {seeds})" for g in ("all", "few")) + " |")
    lines += ["", f"Cost: {report['elapsed_seconds']:.0f} s from the first run's start to the last run's end on a "
              f"shared 2-core machine, {report['wall_seconds']:.0f} s of the runs' training "
              f"({report['cpu_seconds']:.0f} CPU s; pretraining {pre['train_seconds']:.0f} s), one thread a run. "
              "Every run's command is in `commands` of foundation_miniature.json."]
    return "\n".join(lines) + "\n"


def study(args) -> dict:
    s = SETTINGS["tiny" if args.tiny else "study"]
    runs = Path(args.runs) / ("tiny" if args.tiny else "study")
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / "log.txt"
    source = source_arrays(Path(args.cifar10))
    pretrain_npz = write_split(source, PRETRAIN_CLASSES, s["pretrain_per_class"], s["pretrain_test_per_class"],
                               runs / "data" / "cifar10-classes0-4_balanced.npz")
    finetune_npz = write_split(source, FINETUNE_CLASSES, None, s["finetune_test_per_class"],
                               runs / "data" / "cifar10-classes5-9.npz")
    commands, rows = [], []
    pretrain = pretrain_command(s, pretrain_npz, runs / "pretrain")
    commands.append("tailshift " + shlex.join(pretrain))
    pre = run(pretrain, log, args.in_process)
    checkpoint = runs / "pretrain" / "checkpoint.pt"
    finetunes = {}
    for seed in args.seeds:
        for tune in TUNES:
            for method in METHODS:
                command = finetune_command(s, finetune_npz, checkpoint, tune, method, seed,
                                           runs / f"{tune}_{method}_seed{seed}")
                commands.append("tailshift " + shlex.join(command))
                finetunes[(tune, method, seed)] = run(command, log, args.in_process)
                r = finetunes[(tune, method, seed)]["result"]
                print(f"{tune:12s} {method:4s} seed {seed}: " + "  ".join(f"{g} {r[g]:.2f}" for g in GROUPS), flush=True)
    for tune in TUNES:
        for method in METHODS:
            found = [finetunes[(tune, method, seed)] for seed in args.seeds]
            rows.append({
                "tune": tune, "method": method,
                "trainable_parameters": max(max(m["trainable_parameters"].values()) for m in found),
                **{g: summary([m["result"][g] for m in found]) for g in GROUPS},
                "per_seed": {str(seed): {g: m["result"][g] for g in GROUPS} for seed, m in zip(args.seeds, found)},
                "untrained_runs": sum(bool(m["result"]["untrained"]) for m in found),  # the reported head
                "train_seconds_mean": statistics.mean(m["train_seconds"] for m in found),
            })
    every = [pre, *finetunes.values()]
    folders = [runs / "pretrain", *(runs / f"{t}_{m}_seed{seed}" for t, m, seed in finetunes)]
    return {
        "settings": s, "seeds": list(args.seeds), "source": str(args.cifar10), "runs": str(runs),
        "pretrain": {"result": pre["result"], "train_seconds": pre["train_seconds"], "cpu_seconds": pre["cpu_seconds"],
                     "parameters": max(pre["trainable_parameters"].values()),
                     "finetune_counts": next(iter(finetunes.values()))["class_counts"]},
        "rows": rows,
        "against_full": against_full(finetunes, args.seeds),
        # from the first run's start (its config.yaml written) to the last run's end (its metrics.json written)
        "elapsed_seconds": round(max((f / "metrics.json").stat().st_mtime for f in folders)
                                 - min((f / "config.yaml").stat().st_mtime for f in folders), 1),
        "wall_seconds": round(sum(m["train_seconds"] for m in every), 1),
        "cpu_seconds": round(sum(m["cpu_seconds"] for m in every), 1),
        "commands": commands,
        "load_average_at_end": os.getloadavg(),
    }


def tailshift_main(argv: list[str]) -> int:
    """``tailshift`` with timm importable here (``tests/conftest.py::import_real``'s workaround)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import import_real

    import_real("timm")
    from tailshift.cli import main

    return main(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--tailshift"]:
        raise SystemExit(tailshift_main(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1, 2])
    parser.add_argument("--runs", default="/work/study_runs/foundation_miniature")
    parser.add_argument("--cifar10", default="/work/shared/data/cifar10-jpeg.npz")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--tiny", action="store_true", help="a few steps of everything (checks the script)")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process (timm must import here), not in niced child processes")
    args = parser.parse_args(argv)
    report = study(args)
    report["command"] = ("python benchmarks/foundation_miniature.py " + shlex.join(argv)).rstrip()
    text = render(report)
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation_miniature.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "README.md").write_text(text + f"\nCommand: `{report['command']}`\n")
    return report


if __name__ == "__main__":
    main()
