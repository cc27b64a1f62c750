"""examples/csa_own_loop.py (the public API only) runs, and README.md shows it verbatim (so the README cannot drift)."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "csa_own_loop.py"
START, END = "<!-- example:csa_own_loop -->", "<!-- /example -->"


def test_example_runs_and_reports():
    done = subprocess.run([sys.executable, str(EXAMPLE)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    *_, groups, last = done.stdout.strip().splitlines()
    assert re.fullmatch(r"balanced head, training set: all \d+\.\d, many \d+\.\d, med \d+\.\d, few \d+\.\d", groups), groups
    match = re.fullmatch(
        r"final loss (\d+\.\d+), balanced-head train accuracy (\d+\.\d)%, fused steps (\d+), bank holds (\d+) contexts",
        last,
    )
    assert match, last
    loss, accuracy, fused, held = float(match[1]), float(match[2]), int(match[3]), int(match[4])
    assert fused > 0 and held == 32  # the bank filled and context-shifted batches were trained on
    assert accuracy > 50 and loss < 5


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme, f"README.md lacks the markers {START} ... {END}"
    between = readme.split(START, 1)[1].split(END, 1)[0]
    block = re.fullmatch(r"\s*```python\n(.*?)```\s*", between, flags=re.DOTALL)
    assert block, "the example markers in README.md must enclose exactly one ```python block"
    assert block[1] == EXAMPLE.read_text(), "README.md's example differs from examples/csa_own_loop.py"


def test_example_imports_only_the_public_api():
    tree = ast.parse(EXAMPLE.read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {m for m in modules if m.split(".")[0] == "tailshift"}
    assert ours <= {"tailshift.samplers", "tailshift.losses", "tailshift.csa", "tailshift.metrics"}, ours
