"""benchmarks/table2_200ep.py's carry: an unfinished run's checkpoint kept in the checkout restores the run
on a machine whose run folders are gone (or behind), and is never restored over a folder that is ahead."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import table2_200ep  # noqa: E402
from tailshift.io import check_folder_free  # noqa: E402


def fake_run(runs_dir: Path, run: str, epochs: int) -> Path:
    folder = table2_200ep.run_folder(runs_dir, run)
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"stage": "main", "epoch": e, "seconds": 1.0} for e in range(epochs)]
    torch.save({"history": history, "weights": torch.full((3,), float(epochs))}, folder / "checkpoint.pt")
    (folder / "config.yaml").write_text(f"epochs_done: {epochs}\n")
    (folder / "curve.json").write_text(json.dumps(history))
    return folder


def test_a_new_machine_resumes_from_the_carried_epoch(tmp_path):
    old, new, carry = tmp_path / "old", tmp_path / "new", tmp_path / "carry"
    fake_run(old, "crt", 7)
    fake_run(old, "csa", 3)
    table2_200ep.carry_out(old, ["crt", "csa"], carry)
    notes = []
    table2_200ep.carry_in(new, ["crt", "csa"], carry, notes.append)
    for run, epochs in (("crt", 7), ("csa", 3)):
        folder = table2_200ep.run_folder(new, run)
        state = torch.load(folder / "checkpoint.pt", weights_only=False)
        assert torch.equal(state["weights"], torch.full((3,), float(epochs)))
        assert len(json.loads((folder / "curve.json").read_text())) == epochs
        assert (folder / "config.yaml").read_text() == f"epochs_done: {epochs}\n"
        check_folder_free(folder)  # a run folder tailshift resumes, not a foreign one
    assert len(notes) == 2 and "restored crt at epoch 7" in notes[0]


def test_a_folder_ahead_of_the_carry_is_kept_and_a_finished_run_comes_back_finished(tmp_path):
    runs, carry = tmp_path / "runs", tmp_path / "carry"
    fake_run(runs, "crt", 4)
    table2_200ep.carry_out(runs, ["crt"], carry)
    fake_run(runs, "crt", 9)  # trained on past the carried epoch
    notes = []
    table2_200ep.carry_in(runs, ["crt"], carry, notes.append)
    assert notes == [] and table2_200ep.checkpoint_epochs(table2_200ep.run_folder(runs, "crt") / "checkpoint.pt") == 9
    (table2_200ep.run_folder(runs, "crt") / "metrics.json").write_text('{"result": 1}')
    table2_200ep.carry_out(runs, ["crt"], carry)
    new = tmp_path / "new"  # a machine without the run folders: the finished run is re-scored, not retrained
    table2_200ep.carry_in(new, ["crt"], carry, notes.append)
    assert table2_200ep.finished(new, "crt") and len(notes) == 1 and "restored crt at epoch 9" in notes[0]
    assert (table2_200ep.run_folder(new, "crt") / "metrics.json").read_text() == '{"result": 1}'
    stamp = (carry / "crt" / "checkpoint.pt").stat().st_ino  # a rewrite replaces the file
    table2_200ep.carry_out(runs, ["crt"], carry)  # a finished run's carry is written once, not at every publish
    assert (carry / "crt" / "checkpoint.pt").stat().st_ino == stamp


def test_each_run_folder_is_where_tailshift_reproduce_trains_that_run(tmp_path):
    """The study reads, carries and restores each run in the folder its ``reproduce table2`` command writes:
    the shipped recipe's runs by name, the diagnostic CE/cRT on Cao et al.'s recipe under ``ldam/crt``."""
    from tailshift.reproduce.table2 import TABLE2, recipe_choice

    study = TABLE2.studies(["cifar10-lt"], [100])
    assert study[0].folder == table2_200ep.STUDY
    for run, rows in table2_200ep.RUNS.items():
        recipe = table2_200ep.RECIPES.get(run, "shared")
        plan = TABLE2.plan(study, TABLE2.select_rows(rows), [0], (), recipe_choice(recipe))
        folders = {v.run_folder for v in plan.variants.values()}
        expected = table2_200ep.run_folder(tmp_path, run).relative_to(tmp_path / "runs").parent
        assert folders == {str(expected)}, run
    assert table2_200ep.run_folder(tmp_path, "crt-ldam") != table2_200ep.run_folder(tmp_path, "crt")


def test_row_gaps_set_each_finished_pair_beside_the_papers(tmp_path):
    def table(rows: dict) -> str:
        return json.dumps({"table": {"cifar10-lt rho 100": {r: {"all": {"mean": v}} for r, v in rows.items()}}})

    (tmp_path / "table2.json").write_text(table({"ce": 66.58, "crt": 69.2}))
    assert table2_200ep.row_gaps(tmp_path) == [{"gap": "cRT − CE", "ours": 2.62, "paper": 5.3}]
    (tmp_path / "table2.json").write_text(table({"ce": 66.58, "crt": 69.2, "csa": 78.0}))
    (tmp_path / "table2_ldam.json").write_text(table({"ldam-drw": 75.0, "ce": 69.0}))
    gaps = {g["gap"]: (g["ours"], g["paper"]) for g in table2_200ep.row_gaps(tmp_path)}
    assert gaps == {"cRT − CE": (2.62, 5.3), "CSA − CE": (11.42, 10.2), "CSA − cRT": (8.8, 4.9),
                    "LDAM-DRW − CE, both on Cao et al.'s recipe": (6.0, 6.6),
                    "CE on Cao et al.'s recipe − CE on the CSA release's": (2.42, None)}


def test_another_recipes_table_leaves_the_shipped_table_in_place(tmp_path, monkeypatch):
    """Every recipe's rebuild writes table2.md; the shipped recipe's must come last, or the next recipe's
    rename carries it away (CSA's row was once lost so)."""
    def fake_reproduce(command, check, stdout):
        recipe = command[command.index("--recipe") + 1]
        for suffix in (".md", ".json"):
            (tmp_path / f"table2{suffix}").write_text(recipe)

    monkeypatch.setattr(table2_200ep, "finished", lambda runs_dir, run: run in ("crt", "ldam-drw"))
    monkeypatch.setattr(table2_200ep.subprocess, "run", fake_reproduce)
    table2_200ep.rebuild_table(tmp_path, ["crt", "ldam-drw"])
    assert (tmp_path / "table2.md").read_text() == "shared"
    assert (tmp_path / "table2_ldam.md").read_text() == "ldam"
