import json

import pytest

from tailshift import cli


def test_list_shows_registries(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods: bbn, bcl, cbrs, ce, cmo, crt, csa, drs, dual" in out and "lenet2d" in out and "fashion-mnist" in out
    assert "losses: balanced-softmax, ce, class-balanced, drw, focal, la, ldam" in out and "optimizers: adamw, sgd" in out
    assert "schedules: constant, cosine, cosine_epoch, step" in out


def test_errors_are_one_line_without_traceback(capsys):
    assert cli.main(["train", "table1/fashion-lt_ce", "data.longtail.rho=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tailshift: error: data.longtail.rho must be >= 1, got 0.5"


def test_table2_rhos_must_be_integers(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table2", "--rhos", "100,ten", "--output", str(tmp_path)])
    assert "--rhos must be comma-separated integers such as 100,50,10, got '100,ten'" in capsys.readouterr().err


def test_bad_seeds_option_names_the_value_and_the_forms_allowed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table1", "--seeds", "3-1"])
    err = capsys.readouterr().err
    assert "--seeds must be a count (5), an inclusive range (5-19) or a comma-separated list (0,3,7)" in err
    assert "got '3-1'" in err


def test_overrides_may_follow_options(monkeypatch, tmp_path):
    from tailshift.reproduce.grid import Grid

    seen = {}
    monkeypatch.setattr(Grid, "run", lambda grid, *a: seen.setdefault("args", (grid.name, *a)))
    assert cli.main(["reproduce", "table1", "--seeds", "2", "seed=1", "--workers", "1", "train.epochs=3"]) == 0
    name, datasets, seeds, workers, out, overrides, methods, rhos, mnist_root = seen["args"]
    assert (name, seeds, workers, overrides) == ("table1", [0, 1], 1, ["seed=1", "train.epochs=3"])
    seen.clear()
    assert cli.main(["reproduce", "table1", "--seeds", "5-7"]) == 0 and seen["args"][2] == [5, 6, 7]
    seen.clear()
    assert cli.main(["reproduce", "table2", "--rhos", "100,10", "--methods", "bbn,csa", "--datasets", "cifar10-lt"]) == 0
    assert seen["args"][0] == "table2" and seen["args"][1] == ["cifar10-lt"] and seen["args"][6:8] == (["bbn", "csa"], (100, 10))
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table1", "--bogus"])


def test_train_command_runs_a_config(tmp_path, monkeypatch, capsys):
    from conftest import tiny_prepared

    data = tiny_prepared()
    monkeypatch.setattr("tailshift.engine.prepare_data", lambda cfg: data)
    out = tmp_path / "run"
    assert cli.main(["train", "table1/fashion-lt_cbrs", "train.epochs=1", "progress=false", f"output={out}"]) == 0
    assert "cbrs (main head): All" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"]["method"]["name"] == "cbrs"


def test_parser_builds_without_the_heavy_imports():
    """``tailshift --help`` (and list / download) builds the parser without torch, matplotlib or the engine."""
    import subprocess
    import sys

    code = ("import sys; from tailshift.cli import parser; parser(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'tailshift.engine', 'tailshift.reproduce.figures') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_reproduce_command_names_match_the_tables_and_figures():
    from tailshift.reproduce import commands, figures
    from tailshift.reproduce.table1 import TABLE1
    from tailshift.reproduce.table2 import GRIDS

    assert set(commands.GRID_NAMES) == {TABLE1.name, *GRIDS}
    for name in (*commands.FIGURE_NAMES, *commands.CIFAR_FIGURE_NAMES):
        assert callable(getattr(figures, name))
    assert set(commands.COMMANDS.names()) == {*commands.GRID_NAMES, *commands.FIGURE_NAMES,
                                              *commands.CIFAR_FIGURE_NAMES, "ablations", "table3"}


def test_unknown_reproduce_command_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table99"])
    err = capsys.readouterr().err
    assert "invalid choice: 'table99'" in err and "table1" in err and "figure11" in err and "ablations" in err
    from tailshift.reproduce.commands import COMMANDS
    from tailshift.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown reproduce command 'table99'; known: ablations, figure1"):
        COMMANDS.get("table99")
