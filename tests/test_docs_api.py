"""Every ```python block of docs/api.md runs as a script of its own (so the documented API cannot drift)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.DOTALL)


def test_the_page_documents_every_public_module_and_two_processes():
    text = "\n".join(BLOCKS)
    for module in ("samplers", "losses", "csa", "metrics"):
        assert f"from tailshift.{module} import" in text
    assert 'init_process_group("gloo"' in text and "mp.spawn" in text


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block)
    # the checkout's sources first, as the test run itself imports them
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "every block prints what it shows"
