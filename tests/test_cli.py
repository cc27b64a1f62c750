import argparse
import json
from pathlib import Path

import pytest

from tailshift import cli


def test_list_shows_registries(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods: bbn, bcl, cam-bs, cbrs, ce, cmo, crt, csa, drs, dual" in out and "lenet2d" in out and "fashion-mnist" in out
    assert "losses: balanced-softmax, ce, class-balanced, drw, focal, la, ldam" in out and "optimizers: adamw, sgd" in out
    assert "schedules: bbn_multistep, constant, cosine, cosine_epoch, step" in out


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


def test_seeds_parse_from_a_count_a_range_or_a_list():
    assert cli.parse_seeds("3") == [0, 1, 2]
    assert cli.parse_seeds("5-8") == [5, 6, 7, 8] and cli.parse_seeds("0,3,7") == [0, 3, 7]
    for bad in ("0", "x", "9-5", "1,1", "-3", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"--seeds must be a count .* got {bad!r}"):
            cli.parse_seeds(bad)


def test_overrides_may_follow_options(monkeypatch, tmp_path):
    from tailshift.reproduce.grid import Grid

    seen = {}
    monkeypatch.setattr(Grid, "run", lambda grid, *a, **kw: seen.setdefault("args", (grid.name, *a)))
    assert cli.main(["reproduce", "table1", "--seeds", "2", "seed=1", "--workers", "1", "train.epochs=3"]) == 0
    name, datasets, seeds, workers, out, overrides, methods = seen["args"]
    assert (name, datasets, seeds, workers, overrides) == ("table1", None, [0, 1], 1, ["seed=1", "train.epochs=3"])
    assert out == Path("runs/reproduce/table1") and methods is None
    seen.clear()
    assert cli.main(["reproduce", "table1", "--seeds", "5-7"]) == 0 and seen["args"][2] == [5, 6, 7]
    seen.clear()
    assert cli.main(["reproduce", "table2", "--rhos", "100,10", "--methods", "bbn,csa", "--datasets", "cifar10-lt"]) == 0
    assert seen["args"][:2] == ("table2", ["cifar10-lt"]) and seen["args"][6:8] == (["bbn", "csa"], (100, 10))
    seen.clear()
    assert cli.main(["reproduce", "table2", "--output", str(tmp_path)]) == 0  # the command's own defaults
    assert seen["args"][2:5] == ((0, 1, 2, 3, 4), None, tmp_path) and seen["args"][7] == (100,)
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


def test_train_says_last_when_a_head_was_never_trained_and_what_to_change(tmp_path, monkeypatch, capsys):
    from conftest import tiny_prepared

    monkeypatch.setattr("tailshift.engine.prepare_data", lambda cfg: tiny_prepared())
    common = ["train.epochs=1", "progress=false", "method.params.warmup_epochs=0"]
    assert cli.main(["train", "table1/fashion-lt_csa", *common, "method.params.delta=1.0",
                     f"output={tmp_path / 'never'}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("tailshift: no step gave the balanced, ensemble heads a loss, so their scores are a random head's; "
                    "no training image reached the uniform head's confidence method.params.delta=1.0, so no context "
                    "was fused: lower it (e.g. method.params.delta=0.5) or train longer")
    assert cli.main(["train", "table1/fashion-lt_csa", *common, "method.params.delta=0.0",
                     f"output={tmp_path / 'fused'}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("csa (balanced head): All")


def test_parser_builds_without_the_heavy_imports():
    """``tailshift --help`` (and list / download) builds the parser without torch, matplotlib or the engine."""
    import subprocess
    import sys

    code = ("import sys; from tailshift.cli import parser; parser(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'tailshift.engine', 'tailshift.reproduce.figures', "
            "'tailshift.reproduce.jobs') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_table_and_figure_is_a_command_and_every_option_is_taken():
    from tailshift.reproduce import COMMANDS
    from tailshift.reproduce.table1 import TABLE1
    from tailshift.reproduce.table2 import TABLE2, TABLE10, TABLE11
    from tailshift.reproduce.table3 import TABLE3
    from tailshift.reproduce.lift import LIFT

    assert set(COMMANDS.names()) == {*(g.name for g in (TABLE1, TABLE2, TABLE10, TABLE11, TABLE3, LIFT)), "ablations",
                                     *(f"figure{n}" for n in (1, 2, 3, 4, 7, 9, 10, 11))}
    taken = {o for name in COMMANDS.names() for o in COMMANDS.get(name).options}
    assert taken == set(cli.REPRODUCE_OPTIONS)  # no command takes an option the command line lacks, no option is idle


def test_a_command_must_take_an_output_and_overrides():
    from tailshift.reproduce.commands import reproduce_command

    with pytest.raises(TypeError, match="reproduce command 'figure99' must take overrides"):
        reproduce_command("figure99")(lambda output, seeds=3: None)


#: (arguments, the option(s) refused, the options the command takes)
REFUSED = [
    (["table1", "--rhos", "100"], "--rhos", "--datasets, --methods, --seeds, --workers, --mnist-root, --output"),
    (["figure3", "--seeds", "2"], "--seeds", "--datasets, --mnist-root, --output"),
    (["table2", "--study", "fashion-lt"], "--study", "--datasets, --methods, --rhos, --seeds, --workers, --recipe, --output"),
    (["table2", "--mnist-root", "/data/mnist"], "--mnist-root", "--datasets, --methods, --rhos, --seeds, --workers"),
    (["ablations", "--methods", "csa"], "--methods", "--study, --tables, --seeds, --workers, --mnist-root, --output"),
    (["figure10", "--workers", "2"], "--workers", "--datasets, --rhos, --output"),
    (["table3", "--datasets", "imagenet-lt"], "--datasets", "--models, --methods, --seeds, --workers, --nproc, --output"),
    (["figure7", "--seeds", "1", "--rhos", "10"], "--rhos, --seeds", "--datasets, --mnist-root, --output"),
    (["figure1", "--nproc", "2"], "--nproc", "--datasets, --seeds, --workers, --mnist-root, --output"),
]


@pytest.mark.parametrize("args, refused, takes", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_an_option_the_command_does_not_take_is_refused_in_one_line_before_anything_runs(args, refused, takes,
                                                                                          tmp_path, capsys, monkeypatch):
    from tailshift.reproduce.plan import Plan

    monkeypatch.setattr(Plan, "run", lambda *a, **kw: pytest.fail("a study started"))
    out = tmp_path / "out"
    assert cli.main(["reproduce", *args, "--output", str(out), "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tailshift: error: reproduce {args[0]} does not take {refused}; "
                                                    f"it takes {takes}")
    assert not out.exists()


def test_unknown_reproduce_command_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table99"])
    err = capsys.readouterr().err
    assert "invalid choice: 'table99'" in err and "table1" in err and "figure11" in err and "ablations" in err
    from tailshift.registry import UnknownNameError
    from tailshift.reproduce import COMMANDS

    with pytest.raises(UnknownNameError, match="unknown reproduce command 'table99'; known: ablations, figure1"):
        COMMANDS.get("table99")
