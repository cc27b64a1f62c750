"""What the large-scale benchmarks write: a Markdown table (also printed) and a JSON file in
``results/``, both naming the command, with the machine's load while it ran."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from tailshift.engine import versions


def load_note() -> str:
    load = os.getloadavg()
    return (f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} while measuring (a shared machine: other jobs ran)")


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(out: str | Path, name: str, title: str, note: str, lines: list[str], data: dict,
                 file_name: str | None = None) -> None:
    """Print ``# title``, ``note`` and the table ``lines``; write ``file_name`` (default: the script's ``name``)
    .md and .json to ``out``."""
    command = f"python benchmarks/{name}.py {' '.join(sys.argv[1:])}".rstrip()
    md = f"# {title}\n\n{note}\n\n" + "\n".join(lines) + "\n"
    print(md)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    file_name = file_name or name
    (out / f"{file_name}.md").write_text(md + f"\nCommand: `{command}`\n")
    (out / f"{file_name}.json").write_text(json.dumps({"command": command, "load_average": os.getloadavg(),
                                                  "versions": versions(), **data}, indent=1))
