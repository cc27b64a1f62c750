"""The ``tailshift`` command: train a config, reproduce a paper table or figure, fetch data."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

def _train(args) -> None:
    from .config import load_config
    from .engine import train
    from .config import config_path
    from .resolve import resolve_run

    run = resolve_run(load_config(config_path(args.config), args.overrides))  # every check, before any process starts
    cfg = run.config
    if args.nproc > 1:  # the same command on N processes of this machine, through torchrun
        from .distributed import check_device, torchrun_command

        check_device(cfg.device, args.nproc)
        fresh = ["--fresh"] if args.fresh else []
        command = torchrun_command(args.nproc, ["train", args.config, *args.overrides, *fresh])
        code = subprocess.run(command).returncode
        if code != 0:
            raise RuntimeError(f"training on {args.nproc} processes failed (exit code {code})")
        return
    metrics = train(run, resume=not args.fresh)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    print(f"{cfg.method.name} ({metrics['default_head']} head): {_groups_text(metrics['result'])}  -> "
          f"{cfg.output}/metrics.json")
    untrained = [head for head, scores in metrics["heads"].items() if scores["untrained"]]
    if untrained:  # the last line: a head no step trained scores as a random one
        print(f"tailshift: no step gave the {', '.join(untrained)} head{'s' if len(untrained) > 1 else ''} a loss, so "
              f"{'their' if len(untrained) > 1 else 'its'} scores are a random head's; {metrics['untrained_hint']}")


def _groups_text(result: dict) -> str:
    return "  ".join(f"{name} {'-' if result[key] is None else f'{result[key]:.2f}'}"
                     for name, key in (("All", "all"), ("Many", "many"), ("Med", "med"), ("Few", "few")))


def _fork(args) -> None:
    from .fork import fork_run

    metrics = fork_run(args.run, args.output, args.overrides)
    print(f"{metrics['config']['method']['name']} ({metrics['default_head']} head), forked from {args.run}: "
          f"{_groups_text(metrics['result'])}  -> {args.output}/metrics.json")


def _reproduce(args) -> None:
    from .reproduce import COMMANDS

    given = {name: getattr(args, name) for name in REPRODUCE_OPTIONS if hasattr(args, name)}
    COMMANDS.get(args.what)(Path(args.output or f"runs/reproduce/{args.what}"), args.overrides, **given)


def _names(text: str) -> list[str]:
    return text.split(",")


def _rhos(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rhos must be comma-separated integers such as 100,50,10, got {text!r}") from None


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count ("5": seeds 0-4), an inclusive range ("5-19") or a list ("0,3,7").

    A range or list lets a study grow (more seeds into the same output folder: finished
    runs are re-evaluated, not retrained) or report seeds held out from tuning."""
    bad = argparse.ArgumentTypeError(
        f"--seeds must be a count (5), an inclusive range (5-19) or a comma-separated list (0,3,7) "
        f"of non-negative integers, got {text!r}")
    from .reproduce.plan import MAX_SEEDS

    try:
        if "-" in text:
            first, last = (int(x) for x in text.split("-"))
            seeds = range(first, last + 1)
        elif "," in text:
            seeds = [int(x) for x in text.split(",")]
        else:
            seeds = range(int(text))
    except ValueError:
        raise bad from None
    if len(seeds) > MAX_SEEDS:  # before a list of them is made
        raise argparse.ArgumentTypeError(f"--seeds {text} gives {len(seeds)} seeds; a study takes at most {MAX_SEEDS}")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise bad
    return list(seeds)


#: the options a reproduce command may take, by the name of the command's parameter (``--mnist-root``:
#: ``mnist_root``); each command takes those its function names, with its own defaults
REPRODUCE_OPTIONS = {
    "datasets": dict(type=_names, help="comma-separated, e.g. fashion-lt,cfashion-lt or cifar10-lt (default: all "
                                       "found; figure3: cfashion-lt; figure10, figure11: cifar100-lt; lift: cifar100-lt,"
                                       "imagenet-lt,places-lt,inat2018, one a command with its data.root)"),
    "methods": dict(type=_names, help="table rows, comma-separated: table1/figure4 ce,crt,cbrs,csa,csa-uniform,"
                                      "csa-ensemble (table1 default: ce,crt,cbrs; figure4: all); table2: every row of "
                                      "the paper's Table 2 (ce,focal,cb-focal,drs,ce-drw,ldam-drw,crt,lws,bbn,mixup,"
                                      "remix,m2m,cam-bs,cmo,crt-mixup,lws-mixup,csa,csa-mixup) and cbrs,la,cb-ce,"
                                      "balanced-softmax,tau-norm,dual,csa-uniform,csa-ensemble (default: all); table10: "
                                      "csa-cbrs,csa-la,csa-both (default); table11: bcl,csa-bcl; table3: ce,crt,cbrs,"
                                      "csa,csa-uniform,csa-ensemble (default: ce,crt,cbrs,csa); lift: lift,lift-csa,"
                                      "lift-csa-uniform (default: lift,lift-csa)"),
    "models": dict(type=_names, help="backbones, comma-separated of resnet10,resnet50 (default both)"),
    "recipe": dict(help="table2: paper (default: each row on its authors' recipe), shared (every row on the CSA "
                        "release's) or one recipe for every row: csa-release, ldam, bbn, mislas, kang"),
    "rhos": dict(type=_rhos, help="imbalance ratios, comma-separated (default 100); figure10, figure11: the first one"),
    "study": dict(help="the study whose CSA config is varied (default cifar100-lt, as the paper; fashion-lt or "
                       "cfashion-lt run on a CPU)"),
    "tables": dict(type=_names, help="comma-separated of table4,table5,table6,table8,figure8 (default: all the "
                                     "study's backbone allows; table8 needs a pooled backbone)"),
    "seeds": dict(type=parse_seeds, help="training seeds per row: a count (5: seeds 0-4, the default), a range (5-19) "
                                         "or a list (0,3,7)"),
    "workers": dict(type=int, help="parallel worker processes (default: one per core; table3, lift: 1, each run "
                                   "takes the machine)"),
    "nproc": dict(type=int, help="processes per run (one per GPU), each run launched with torchrun (default 1)"),
    "mnist_root": dict(help="folder with the MNIST idx files (for MNIST-LT / CMNIST-LT)"),
}


def _add_reproduce_command(sub) -> None:
    """``reproduce``: one paper table or figure; an option the chosen command does not take is refused."""
    from .reproduce import COMMANDS
    from .reproduce.commands import flag

    commands = [COMMANDS.get(name) for name in COMMANDS.names()]
    listing = "\n".join(f"  {c.name}: {c.summary}\n      options: {' '.join(flag(o) for o in c.options)}"
                         for c in commands)
    r = sub.add_parser("reproduce", help="re-run a paper table or figure and print ours beside the paper's",
                       epilog=f"commands and the options each takes (besides --output and key=value):\n{listing}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("what", choices=COMMANDS.names())
    r.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. train.optim.schedule=cosine); "
                        "RUN:key=value only to one run's configs (e.g. csa:method.params.warmup_epochs=1)")
    for name, spec in REPRODUCE_OPTIONS.items():
        takers = [c.name for c in commands if name in c.options]
        r.add_argument(flag(name), dest=name, default=argparse.SUPPRESS,
                       **{**spec, "help": f"{spec['help']} [taken by {', '.join(takers)}]"})
    r.add_argument("--output", default=None, help="output folder (default runs/reproduce/<what>)")
    r.set_defaults(func=_reproduce)


def _download(args) -> None:
    from .data.sources import download

    path = download(args.name, args.root)
    print(f"downloaded {args.name}; use data.root={path}")


def _pack(args) -> None:
    from .config import config_path, load_config
    from .data.build import prepare_data
    from .data.lists import FileDataset
    from .data.pack import pack_progress, write_pack

    cfg = load_config(config_path(args.config), args.overrides)
    data = prepare_data(cfg.data)
    if not isinstance(data.train, FileDataset):
        raise ValueError(f"tailshift pack packs datasets of image files; {cfg.data.dataset} is decoded in memory")
    short_side = cfg.data.resize_size if args.short_side is None else args.short_side
    manifest = write_pack(args.output, (data.train, data.test), short_side, args.workers, pack_progress())
    print(f"wrote {args.output}: {manifest['images']} images at shorter side {short_side}, "
          f"{manifest['pixel_bytes'] / 2 ** 30:.2f} GiB; train with data.pack={args.output}")


def _list(args) -> None:
    from .data.sources import DATASETS
    from .methods import METHODS
    from .methods.losses import LOSSES
    from .models import MODELS
    from .optim import OPTIMIZERS
    from .schedules import SCHEDULES

    for registry in (DATASETS, MODELS, METHODS, LOSSES, OPTIMIZERS, SCHEDULES):
        print(f"{registry.kind}{'es' if registry.kind.endswith('s') else 's'}: {', '.join(registry.names())}")


def _evaluate(args) -> None:
    from .saved_run import evaluation_folder, evaluate_run, load_run, write_evaluation

    run = load_run(args.run, args.overrides, args.allow_unfinished)
    result = evaluate_run(run)
    data = result["data"]
    print(f"{run.folder}: {run.cfg.method.name} on {data['dataset']} test ({data['test_images']} images), "
          f"groups by the run's training counts")
    print(f"{'head':10s} {'All':>6s} {'Many':>6s} {'Med':>6s} {'Few':>6s}")
    for head, r in result["heads"].items():
        cells = " ".join("     -" if r[k] is None else f"{r[k]:6.2f}" for k in ("all", "many", "med", "few"))
        note = "  (never trained: no step gave this head a loss)" if r["untrained"] else ""
        print(f"{head + (' *' if head == run.head else ''):10s} {cells}{note}")
    counts = result["train_class_counts"]
    print(f"per class, {run.head} head (training images n): " + ", ".join(
        f"{name} {'-' if acc is None else f'{acc:.1f}'} (n={n})"
        for name, acc, n in zip(result["class_names"], result["heads"][run.head]["per_class"], counts)))
    paths = write_evaluation(run, result, Path(args.output) if args.output else evaluation_folder(run.folder, args.overrides))
    print(f"wrote {paths[0]} and {paths[1]}")


def _predict(args) -> None:
    from .saved_run import load_run, predict_images

    run = load_run(args.run, args.overrides, args.allow_unfinished)
    for item in predict_images(run, args.images, args.top_k):
        print(f"{item['image']} ({run.head} head): " + ", ".join(f"{name} {p:.3f}" for _, name, p in item["top"]))


def _export(args) -> None:
    from .saved_run import export_run, exported_input_shape, load_run

    run = load_run(args.run, args.overrides, args.allow_unfinished)
    path = export_run(run, args.format, args.output)
    shape = exported_input_shape(run)
    views = f" (each image's {shape[0]} views, as data.tte={run.cfg.data.tte} makes them; logits averaged)" \
        if len(shape) == 4 else ""
    print(f"wrote {path}: uint8 images N x {' x '.join(map(str, shape))}{views} (pixels 0-255, normalisation "
          f"inside) -> logits N x {run.data.num_classes} of the {run.head} head")


def _add_run_commands(sub) -> None:
    """evaluate / predict / export: commands on a finished run folder (``saved_run``)."""
    e = sub.add_parser("evaluate", help="re-score a finished run on its test set or, with data.* overrides, other "
                                        "data: per head, group and class, with a confusion matrix PNG")
    e.add_argument("run", help="a finished run folder (config.yaml, metrics.json, checkpoint.pt)")
    e.add_argument("overrides", nargs="*", help="key=value, e.g. data.root=/other/data device=cpu")
    e.add_argument("--output", default=None, help="folder for evaluation.json and confusion.png "
                                                   "(default RUN/evaluation/test, or named after the overrides)")
    e.set_defaults(func=_evaluate)
    p = sub.add_parser("predict", help="the reported head's top classes of image files")
    p.add_argument("run", help="a finished run folder")
    p.add_argument("images", nargs="+", help="image files (any size; converted as the run's test pipeline does)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.set_defaults(func=_predict)
    x = sub.add_parser("export", help="the backbone and the reported head as one model that runs without tailshift")
    x.add_argument("run", help="a finished run folder")
    x.add_argument("--format", required=True, help="torchscript or onnx")
    x.add_argument("--output", default=None, help="the file to write (default RUN/model.pt or RUN/model.onnx)")
    x.set_defaults(func=_export)
    for command in (e, p, x):
        command.add_argument("--allow-unfinished", action="store_true",
                             help="use the run's last checkpoint although the run did not finish")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tailshift", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one config (resumes from its output folder's checkpoint)")
    t.add_argument("config", help="a YAML path or a shipped config name such as table1/fashion-lt_crt")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. seed=3 train.epochs=4 method.name=cbrs")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (one per GPU), launched with torchrun (default 1)")
    t.set_defaults(func=_train)

    f = sub.add_parser("fork", help="train a finished two-stage run's later stage again under other settings of "
                                    "that stage, or as another method of its family (cRT, LWS, tau-norm: another "
                                    "classifier on the same representation; method.name=lws starts from LWS's "
                                    "own later-stage defaults)")
    f.add_argument("run", help="the source run folder (its checkpoint past the end of its first stage)")
    f.add_argument("overrides", nargs="*", help="key=value of the later stage, e.g. method.params.retrain_lr=0.05")
    f.add_argument("--output", required=True, help="the new run's folder (re-run the command to resume it)")
    f.set_defaults(func=_fork)

    _add_reproduce_command(sub)

    d = sub.add_parser("download", help="fetch a dataset's official files (needs internet; never done implicitly)")
    d.add_argument("name", choices=("fashion-mnist", "mnist", "cifar10", "cifar100"))
    d.add_argument("--root", required=True)
    d.set_defaults(func=_download)

    k = sub.add_parser("pack", help="decode a config's image files once into a memory-mapped pack that training "
                                     "reads without JPEG decoding (then train with data.pack=FOLDER)")
    k.add_argument("config", help="a YAML path or a shipped config name whose data is a dataset of image files")
    k.add_argument("overrides", nargs="*", help="key=value, e.g. data.root=/data/imagenet")
    k.add_argument("--output", required=True, help="the pack's folder")
    k.add_argument("--short-side", type=int, default=None,
                   help="shorter side the images are stored at (default: the config's data.resize_size)")
    k.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    k.set_defaults(func=_pack)

    ls = sub.add_parser("list", help="list the registered datasets, models, methods, losses and optimizers")
    ls.set_defaults(func=_list)
    _add_run_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may also follow the options (argparse stops positionals at the first option)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError) as err:  # our errors are one line: show them without a traceback
        print(f"tailshift: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: every file is whole (atomic writes); a training run says where it resumes
        print(f"tailshift: {str(err) or 'interrupted; re-run the same command to go on'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
