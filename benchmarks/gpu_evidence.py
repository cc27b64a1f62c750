"""GPU evidence in one command: the epoch-speed table, then as many 200-epoch CIFAR-10-LT runs as fit.

Within ``--budget`` seconds of wall time (compilation included; 540 s by default, for a 9-minute slot):
1. ``gpu_epoch.py``'s table: CE, the dual branch, CSA and CSA with one joint forward, eager against
   compiled + bf16 + channels-last + fused SGD, each an epoch's full batches timed after a whole untimed
   epoch, the median of 3 repeats (at most ``--table-budget`` seconds: the variants left are skipped);
2. the host loader feeding the GPU (about a minute; ``--no-loader`` skips it): images per second of whole
   training feeds of generated ImageNet-size JPEGs with 8 workers: decoded by the workers, from a
   ``tailshift pack``, and with ``data.decode=gpu`` (``stream_loader.device_feed_rates``);
3. the 200-epoch runs of Table 2 on CIFAR-10-LT (rho 100), ResNet-32, the shipped configs: CE (with its
   cRT, one run), CSA, CB-RS, LA and LDAM-DRW at seed 0 under the GPU defaults, then CE and CSA at seed 0
   with ``train.amp=off`` (does bf16 move anything beyond seed noise?), then seeds 1 and 2, ``--parallel``
   runs at once on the one GPU (a ResNet-32 leaves most of it idle). When the budget runs out the runs
   still training are stopped; each has a checkpoint of its last epoch, so the same command resumes them
   and re-reads the finished ones.

Writes ``benchmarks/results/gpu_evidence_<gpu>/``: ``gpu_epoch.md|json``, ``host_loader.md|json`` and
``gpu_evidence.md|json``
(every run's state, All / Many / Med / Few, wall time and peak GPU memory). ``--tiny`` is the CPU check
of the whole path (a few steps, no compile, 2-epoch runs on a small long-tailed draw) that the tests run.

    python benchmarks/gpu_evidence.py                 # on one CUDA GPU
    python benchmarks/gpu_evidence.py --tiny --out /tmp/evidence --runs-dir /tmp/evidence-runs
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import gpu_epoch
import stream_loader
from report import cpu_model

#: config run -> the Table 2 rows it gives (head: row label)
RUNS = {"crt": {"ce": "CE", "crt": "cRT"}, "csa": {"balanced": "CSA"}, "cbrs": {"main": "CB-RS"},
        "la": {"main": "LA"}, "ldam-drw": {"main": "LDAM-DRW"}}
#: the paper's Table 2, CIFAR-10-LT rho 100, All
PAPER = {"CE": 70.4, "cRT": 75.7, "CSA": 80.6, "LDAM-DRW": 77.0}
#: the tiny setting (--tiny): a small long-tailed draw in small batches, for the speed table and the runs
TINY_DATA = ("data.longtail.rho=10", "data.longtail.n_max=40", "train.batch_size=32")
TINY_OVERRIDES = (*TINY_DATA, "train.epochs=2", "train.eval_every=0", "train.compile=off", "threads=1",
                  "train.optim.warmup_epochs=1", "train.optim.milestones=[1]")
TINY_RUN_OVERRIDES = {"crt": ("method.params.retrain_epochs=1",), "csa": ("method.params.warmup_epochs=1",),
                      "ldam-drw": ("method.params.loss_params.start_epoch=1",)}


@dataclass(frozen=True)
class Run:
    run: str  # the shipped config table2/cifar10-lt_<run>
    seed: int
    amp_off: bool = False

    @property
    def name(self) -> str:
        return f"{self.run}-seed{self.seed}" + ("-amp-off" if self.amp_off else "")

    def command(self, runs_dir: Path, tiny: bool) -> list[str]:
        extra = [*TINY_OVERRIDES, *TINY_RUN_OVERRIDES.get(self.run, ())] if tiny else []
        return [sys.executable, "-m", "tailshift", "train", f"table2/cifar10-lt_{self.run}", f"seed={self.seed}",
                f"output={runs_dir / self.name}", "progress=false", *(["train.amp=off"] if self.amp_off else []),
                *extra]


def planned_runs(seeds: list[int], configs: list[str]) -> list[Run]:
    """Every config at the first seed, then CE and CSA at that seed in float32, then the other seeds."""
    first, *rest = seeds
    return ([Run(r, first) for r in configs] + [Run(r, first, True) for r in ("crt", "csa") if r in configs]
            + [Run(r, s) for s in rest for r in configs])


def run_state(runs_dir: Path, run: Run) -> dict:
    """What a run's folder holds: finished (its metrics), stopped part-way (its curve) or not started."""
    folder = runs_dir / run.name
    row = {"run": run.name, "config": f"table2/cifar10-lt_{run.run}", "seed": run.seed,
           "amp": "off" if run.amp_off else "auto"}
    if (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
        heads = {label: {k: metrics["heads"][head][k] for k in ("all", "many", "med", "few")}
                 for head, label in RUNS[run.run].items()}
        return {**row, "state": "finished", "epochs": len(metrics["curve"]), "heads": heads,
                "train_seconds": metrics["train_seconds"], "peak_gpu_memory_bytes": metrics["peak_gpu_memory_bytes"],
                "speed": metrics["speed"], "device": metrics["device"]}
    if (folder / "curve.json").exists():
        curve = json.loads((folder / "curve.json").read_text())
        return {**row, "state": "stopped", "epochs": len(curve), "train_seconds": sum(r["seconds"] for r in curve)}
    return {**row, "state": "not started"}


def train_until(runs: list[Run], runs_dir: Path, parallel: int, deadline: float, tiny: bool, log) -> dict[str, int]:
    """Train ``runs`` in order, ``parallel`` at once, until they are done or ``deadline`` (perf_counter) passes;
    then stop the ones still training (SIGTERM, a kill after 20 s): each resumes from its last epoch.
    Returns the exit code of each run that failed, by name."""
    waiting = [r for r in runs if run_state(runs_dir, r)["state"] != "finished"]
    running: dict[Run, subprocess.Popen] = {}
    failed = {}
    try:
        while (waiting or running) and time.perf_counter() < deadline:
            while waiting and len(running) < parallel:
                run = waiting.pop(0)
                running[run] = subprocess.Popen(run.command(runs_dir, tiny), stdout=log, stderr=log)
            time.sleep(0.5)
            for run, process in list(running.items()):
                if process.poll() is not None:
                    del running[run]
                    if process.returncode != 0:
                        failed[run.name] = process.returncode
                        print(f"run {run.name} failed (exit {process.returncode}); see {log.name}", flush=True)
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        for process in running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return failed


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({cpu_model()})"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render(device: str, states: list[dict], seconds: float, command: str, tiny: bool) -> str:
    lines = [f"# GPU evidence: Table 2, CIFAR-10-LT (rho 100), ResNet-32, 200 epochs, on {device}", "",
             ("A CPU check of the benchmark's whole path with the tiny setting (2 epochs on a small draw): "
              "not a result." if tiny else
              "Accuracy on the JPEG-decoded CIFAR-10 copy in ../shared/data (indicative; every row moves). "),
             f"Wall time of this invocation: {seconds:.0f} s. Epoch speeds: `gpu_epoch.md`.", "",
             "| Run | Amp | State | Epochs | Row | All | Many | Med | Few | Paper All | Wall (s) | Peak GPU memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in states:
        peak = s.get("peak_gpu_memory_bytes")
        memory = f"{peak / 2**20:.0f}" if peak else "-"
        wall = f"{s['train_seconds']:.0f}" if "train_seconds" in s else "-"
        common = f"| {s['run']} | {s.get('speed', {}).get('amp', s['amp'])} | {s['state']} | {s.get('epochs', 0)}"
        if s["state"] != "finished":
            lines.append(f"{common} | - | - | - | - | - | - | {wall} | - |")
            continue
        for label, h in s["heads"].items():
            paper = PAPER.get(label)
            lines.append(f"{common} | {label} | {h['all']:.1f} | {h['many']:.1f} | {h['med']:.1f} | {h['few']:.1f} | "
                         f"{paper if paper is not None else '-'} | {wall} | {memory} |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def speed_table(out: Path, device: str, deadline: float, tiny: bool) -> None:
    """``gpu_epoch.py`` method by method until ``deadline``; one table of them all in ``out``/gpu_epoch.md."""
    if tiny:
        methods = ["CE"]
        options = ["--variants", "eager", "--steps", "2", "--warmup", "1", "--repeats", "1"]
    else:
        methods, options = list(gpu_epoch.METHODS), ["--variants", "eager,compiled"]
    results = {}
    for method in methods:
        if time.perf_counter() > deadline:
            print(f"speed table: {method} and later skipped, past --table-budget", flush=True)
            break
        argv = ["--methods", method, *options, "--out", str(out / f"gpu_epoch_{slug(method)}"),
                *(TINY_DATA if tiny else ())]
        results[method] = gpu_epoch.main(argv)[method]
    variants = list(next(iter(results.values()))) if results else []
    (out / "gpu_epoch.md").write_text(
        f"# Epoch seconds on {device} (CIFAR-10-LT rho 100, ResNet-32, batch 128)\n\n"
        "An epoch's full batches after a whole untimed epoch, the median of the repeats (per method: "
        "`gpu_epoch_<method>.json`, with the graphs dynamo compiled).\n\n"
        + (gpu_epoch.render(results, variants) if results else "No method fitted in --table-budget.") + "\n")
    (out / "gpu_epoch.json").write_text(json.dumps({"device": device, "results": results}, indent=1))


def loader_table(out: Path, device: str, tiny: bool) -> None:
    """``stream_loader.device_feed_rates`` on generated JPEGs; ``out``/host_loader.md|json."""
    import tempfile

    from tailshift.data.pack import Pack, write_pack

    images, workers, batches, batch = (24, 2, 2, 8) if tiny else (512, 8, 6, 64)
    target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = stream_loader.dataset(root, stream_loader.write_jpegs(root, images))
        write_pack(root / "pack", [data], 256, workers=workers)
        rows = stream_loader.device_feed_rates(data, Pack(root / "pack"), target, workers, batches, batch)
    lines = [f"# Host loader feeding {device}", "",
             f"{images} generated JPEGs (~500 x 375), train recipe (random-resized crop 224, flip, jitter 0.4), "
             f"batches of {batch} normalised on the device, {workers} loader workers, {batches} batches timed after "
             "one untimed batch.", "", "| Feed | Images / s | Mean normalised pixel |", "|---|---|---|"]
    lines += [f"| {r['feed']} | {r['images_per_s']} | {r['mean_normalised_pixel']} |" for r in rows]
    (out / "host_loader.md").write_text("\n".join(lines) + "\n")
    (out / "host_loader.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=540.0, help="wall seconds for everything (default 540)")
    parser.add_argument("--table-budget", type=float, default=200.0, help="wall seconds at most for the speed table")
    parser.add_argument("--no-loader", action="store_true", help="skip the host-loader table (about a minute)")
    parser.add_argument("--parallel", type=int, default=None, help="runs at once (default: 4 on a GPU, 1 on a CPU)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated, in order")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"configs, in order (default {','.join(RUNS)})")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/gpu_evidence_<gpu>)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/gpu_evidence"), help="the runs' folders")
    parser.add_argument("--tiny", action="store_true", help="the CPU check: a few steps, 2-epoch runs, no compile")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.budget <= 0 or args.table_budget < 0:
        parser.error(f"--budget must be > 0 and --table-budget >= 0, got {args.budget} and {args.table_budget}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    configs = args.runs.split(",")
    unknown = [r for r in configs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    cuda = torch.cuda.is_available()
    parallel = args.parallel if args.parallel is not None else (4 if cuda else 1)
    if parallel < 1:
        parser.error(f"--parallel must be >= 1, got {parallel}")
    device = device_name()
    out = args.out or Path(__file__).parent / "results" / f"gpu_evidence_{slug(device)}"
    out.mkdir(parents=True, exist_ok=True)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if args.table_budget > 0:
        speed_table(out, device, started + args.table_budget, args.tiny)
    if not args.no_loader:
        loader_table(out, device, args.tiny)
    runs = planned_runs(seeds, configs)
    with open(args.runs_dir / "train.log", "a") as log:
        failed = train_until(runs, args.runs_dir, parallel, started + args.budget - 30, args.tiny, log)
    states = [run_state(args.runs_dir, r) for r in runs]
    for state in states:
        if state["run"] in failed and state["state"] != "finished":
            state["state"] = f"failed (exit {failed[state['run']]}, see {args.runs_dir / 'train.log'})"
    seconds = time.perf_counter() - started
    command = "python benchmarks/gpu_evidence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    markdown = render(device, states, seconds, command.strip(), args.tiny)
    (out / "gpu_evidence.md").write_text(markdown)
    (out / "gpu_evidence.json").write_text(json.dumps(
        {"device": device, "command": command.strip(), "wall_seconds": round(seconds, 1), "parallel": parallel,
         "tiny": args.tiny, "versions": gpu_epoch.versions(), "runs": states}, indent=1))
    print(markdown)
    return states


if __name__ == "__main__":
    main()
