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
    from .reproduce.common import config_path

    cfg = load_config(config_path(args.config), args.overrides)
    if args.nproc > 1:  # the same command on N processes of this machine, through torchrun
        from .distributed import torchrun_command

        fresh = ["--fresh"] if args.fresh else []
        command = torchrun_command(args.nproc, ["train", args.config, *args.overrides, *fresh])
        code = subprocess.run(command).returncode
        if code != 0:
            raise RuntimeError(f"training on {args.nproc} processes failed (exit code {code})")
        return
    metrics = train(cfg, resume=not args.fresh)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    r = metrics["result"]
    groups = "  ".join(f"{name} {'-' if r[key] is None else f'{r[key]:.2f}'}"
                       for name, key in (("All", "all"), ("Many", "many"), ("Med", "med"), ("Few", "few")))
    print(f"{cfg.method.name} ({metrics['default_head']} head): {groups}  -> {cfg.output}/metrics.json")


def _reproduce(args) -> None:
    from .reproduce.commands import COMMANDS, Request

    request = Request(
        out=Path(args.output or f"runs/reproduce/{args.what}"), workers=args.workers, seeds=args.seeds,
        overrides=args.overrides, datasets=args.datasets, methods=args.methods, rhos=args.rhos,
        mnist_root=args.mnist_root, study=args.study, tables=args.tables, models=args.models, nproc=args.nproc,
    )
    COMMANDS.get(args.what)(request)


def _names(text: str) -> list[str]:
    return text.split(",")


def _rhos(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rhos must be comma-separated integers such as 100,50,10, got {text!r}") from None


def _seeds(text: str) -> list[int]:
    from .reproduce.common import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _download(args) -> None:
    from .data.sources import download

    path = download(args.name, args.root)
    print(f"downloaded {args.name}; use data.root={path}")


def _list(args) -> None:
    from .data.sources import DATASETS
    from .methods import METHODS
    from .methods.losses import LOSSES
    from .models import MODELS
    from .optim import OPTIMIZERS

    for registry in (DATASETS, MODELS, METHODS, LOSSES, OPTIMIZERS):
        print(f"{registry.kind}{'es' if registry.kind.endswith('s') else 's'}: {', '.join(registry.names())}")


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

    from .reproduce.commands import COMMANDS

    r = sub.add_parser("reproduce", help="re-run a paper table or figure and print ours beside the paper's")
    r.add_argument("what", choices=COMMANDS.names())
    r.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. train.optim.schedule=cosine); "
                        "RUN:key=value only to one run's configs (e.g. csa:method.params.warmup_epochs=1)")
    r.add_argument("--seeds", type=_seeds, default=list(range(5)),
                   help="training seeds per row: a count (5: seeds 0-4, the default), a range (5-19) or a list (0,3,7)")
    r.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: one per core; table3: 1, each run takes the machine)")
    r.add_argument("--datasets", type=_names, default=None,
                   help="comma-separated, e.g. fashion-lt,cfashion-lt or cifar10-lt (default: all found)")
    r.add_argument("--methods", type=_names, default=None,
                   help="table rows, comma-separated: table1/figure4 ce,crt,cbrs,csa,csa-uniform,csa-ensemble "
                        "(table1 default: ce,crt,cbrs; figure4: all); table2: every row of the paper's Table 2 "
                        "(ce,focal,cb-focal,drs,ce-drw,ldam-drw,crt,lws,bbn,mixup,remix,m2m,cam-bs,cmo,crt-mixup,"
                        "lws-mixup,csa,csa-mixup) and cbrs,la,cb-ce,balanced-softmax,tau-norm,dual,csa-uniform,"
                        "csa-ensemble (default: all); table10: csa-cbrs,csa-la,csa-both (default); table11: bcl,csa-bcl; "
                        "table3: ce,crt,cbrs,csa,csa-uniform,csa-ensemble (default: ce,crt,cbrs,csa)")
    r.add_argument("--models", type=_names, default=None,
                   help="table3: backbones, comma-separated of resnet10,resnet50 (default both)")
    r.add_argument("--nproc", type=int, default=1,
                   help="table3: processes per run (one per GPU), each run launched with torchrun (default 1)")
    r.add_argument("--rhos", type=_rhos, default=(100,),
                   help="table2, table10, table11, figure9: imbalance ratios, comma-separated (default 100); "
                        "figure10, figure11: the first one")
    r.add_argument("--study", default="cifar100-lt",
                   help="ablations: the study whose CSA config is varied (default cifar100-lt, as the paper; "
                        "fashion-lt or cfashion-lt run on a CPU)")
    r.add_argument("--tables", type=_names, default=None,
                   help="ablations: comma-separated of table4,table5,table6,table8,figure8 (default: all the "
                        "study's backbone allows; table8 needs a pooled backbone)")
    r.add_argument("--mnist-root", default=None, help="folder with the MNIST idx files (for MNIST-LT / CMNIST-LT)")
    r.add_argument("--output", default=None, help="output folder (default runs/reproduce/<what>)")
    r.set_defaults(func=_reproduce)

    d = sub.add_parser("download", help="fetch a dataset's official files (needs internet; never done implicitly)")
    d.add_argument("name", choices=("fashion-mnist", "mnist", "cifar10", "cifar100"))
    d.add_argument("--root", required=True)
    d.set_defaults(func=_download)

    ls = sub.add_parser("list", help="list the registered datasets, models, methods, losses and optimizers")
    ls.set_defaults(func=_list)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
