"""Wall time of the full Table 1 study on Fashion-LT and CFashion-LT (3 methods x 5 seeds).

Target (issue): under 5 minutes on 2 CPU cores. Runs `tailshift reproduce table1`
in-process and writes its table (benchmarks/results/table1/table1.md, .json) and the
timing (benchmarks/results/table1_wall.json).

    python benchmarks/table1_wall.py [--workers 2] [--seeds 5] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from tailshift.engine import versions
from tailshift.reproduce import table1

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS / "table1"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    started = time.perf_counter()
    table1.run(["fashion-lt", "cfashion-lt"], args.seeds, args.workers, Path(args.output), args.overrides, None,
               ["ce", "crt", "cbrs"])
    wall = time.perf_counter() - started
    runs = json.loads((Path(args.output) / "table1.json").read_text())["runs"]
    per_run = {r["key"]: r["seconds"] for r in runs}
    record = {"wall_seconds": round(wall, 1), "target_seconds": 300, "met": wall < 300, "workers": args.workers,
              "cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
              "runs": len(runs), "run_seconds": per_run, "overrides": args.overrides, "versions": versions()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "table1_wall.json").write_text(json.dumps(record, indent=1))
    print(f"| runs | workers | wall (s) | target (s) | met |\n|---|---|---|---|---|\n"
          f"| {len(runs)} | {args.workers} | {wall:.0f} | 300 | {'yes' if wall < 300 else 'NO'} |")


if __name__ == "__main__":
    main()
