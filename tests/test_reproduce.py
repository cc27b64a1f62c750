import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tailshift.config import config_path
from tailshift.reproduce.jobs import Job, JobResult, job_result
from tailshift.reproduce.statistics import DIVERGED, HeadScores, aggregate, paired_difference, sign_flip_p
from tailshift.reproduce.table1 import TABLE1


def plan_for(datasets, seeds, overrides, rows):
    return TABLE1.plan(TABLE1.studies(datasets), rows, seeds, overrides)


def result(study, run_, seed, heads, **fields):
    return JobResult(Job(study, run_, seed, f"table1/{study}_{run_}"), diverged=False, seconds=1.0, heads=heads,
                     **fields)


def run(all_, collapsed=False, untrained=False):
    return HeadScores(all=all_, many=all_, med=all_, few=None, collapsed=collapsed, untrained=untrained)


def test_aggregate_leaves_diverged_and_collapsed_runs_out_of_the_mean():
    agg = aggregate([run(50.0), run(60.0), run(10.0, collapsed=True), DIVERGED])
    assert (agg.runs, agg.diverged, agg.collapsed) == (4, 1, 1)
    assert agg.all.mean == 55.0 and agg.all.std == pytest.approx(7.0711, abs=1e-4)
    assert agg.few.mean is None
    assert agg.all_runs == (50.0, 60.0, 10.0, None)


def test_a_run_reads_its_heads_or_diverged():
    healthy_run = result("fashion-lt", "crt", 0, {"ce": run(50.0), "crt": run(60.0)})
    assert healthy_run.scores("crt") == run(60.0)
    diverged = JobResult(healthy_run.job, diverged=True, seconds=2.0, error="loss is nan")
    assert diverged.scores("crt") is DIVERGED and not DIVERGED.healthy
    assert diverged.to_json() == {"key": "fashion-lt/crt/seed0", "study": "fashion-lt", "run": "crt", "seed": 0,
                                  "diverged": True, "error": "loss is nan", "seconds": 2.0}


def test_variants_of_one_run_share_its_jobs_and_must_agree_on_its_config(tmp_path):
    from tailshift.reproduce.plan import Plan, Variant

    ce, crt = Variant("s", "crt", "table1/fashion-lt_crt", "ce"), Variant("s", "crt", "table1/fashion-lt_crt", "crt")
    plan = Plan({("s", "ce"): ce, ("s", "crt"): crt}, 2)
    assert [j.key for j in plan.jobs(tmp_path)] == ["s/crt/seed0", "s/crt/seed1"]
    with pytest.raises(ValueError, match="run s/crt is planned with two configs"):
        Plan({("s", "ce"): ce, ("s", "crt"): Variant("s", "crt", "table1/fashion-lt_crt", "crt", ("seed=3",))}, 1)


def test_a_study_on_nproc_processes_reports_one_run_at_a_time_not_the_workers_option(tmp_path, monkeypatch, capsys):
    import tailshift.reproduce.jobs as jobs

    def distributed(jobs_, nproc):
        assert nproc == 2
        heads = {h: HeadScores(50.0, 50.0, 50.0, 50.0) for h in ("ce", "crt", "main")}
        return [result(j.study, j.run, j.seed, heads, train_seconds=1.0) for j in jobs_]

    monkeypatch.setattr(jobs, "run_jobs_distributed", distributed)
    TABLE1.run(["fashion-lt"], 1, 8, tmp_path, [], nproc=2)
    md = (tmp_path / "table1.md").read_text()
    assert "2 runs, 1 worker process, wall time" in md and "8 worker" not in md
    assert "Each run on 2 processes (torchrun), one run after the other." in md
    assert "Paper: paper Table 1 (final epoch, rho 100); CMNIST-LT reference = the release's printed numbers." in md
    saved = json.loads((tmp_path / "table1.json").read_text())
    assert (saved["workers"], saved["nproc"]) == (1, 2)
    capsys.readouterr()


def test_table1_jobs_cover_every_dataset_run_and_seed_longest_first(tmp_path):
    jobs = plan_for(["fashion-lt", "cfashion-lt"], 2, ["train.epochs=1"],
                    TABLE1.select_rows(["ce", "crt", "cbrs"])).jobs(tmp_path)
    assert len(jobs) == 2 * 2 * 2  # CE and cRT share the crt runs
    assert all(j.run == "cbrs" for j in jobs[:4])
    assert {(j.study, j.run, j.seed) for j in jobs} == {(d, r, s) for d in ("fashion-lt", "cfashion-lt")
                                                        for r in ("crt", "cbrs") for s in (0, 1)}
    assert all(config_path(j.config).exists() for j in jobs)
    assert jobs[0].resolve().train.epochs == 1


def test_table_rows_come_from_the_right_heads_and_print_beside_the_paper():
    runs = [result("fashion-lt", r, s, {"ce": run(40.0 + s), "crt": run(60.0 + s), "main": run(80.0 + s)})
            for r in ("crt", "cbrs") for s in range(2)]
    rows, studies = TABLE1.select_rows(None), TABLE1.studies(["fashion-lt"])
    results = TABLE1.plan(studies, rows, 2, []).results(runs)
    table = results.table()
    assert table["fashion-lt"]["ce"].all.mean == 40.5 and table["fashion-lt"]["cbrs"].all.mean == 80.5
    md = TABLE1.report(results, studies, rows, []).markdown()
    assert "| fashion-lt | CE | 40.5 ± 0.7 |" in md and "| 45.6 | 94.7 / 43.1 / 0.0 |" in md
    assert md.startswith("# Table 1: re-sampling on MNIST-family long-tail sets\n\nMean ± std (sample) over 2 seeds")


def test_tables_show_the_best_test_epoch_beside_the_final_one_labelled():
    def metrics(all_, best):
        head = {"all": all_, "many": all_, "med": all_, "few": all_, "collapsed": False, "untrained": False,
                "max_pred_share": 0.2, "per_class": [all_]}
        return {"heads": {"main": head}, "best_epoch": {"main": {"stage": "train", "epoch": 150, "all": best}},
                "default_head": "main", "train_seconds": 1.0, "data_source": None}

    jobs_ = [Job("fashion-lt", "cbrs", s, "table1/fashion-lt_cbrs") for s in range(2)]
    runs = [job_result(j, j.resolve(), metrics(80.0 + s, 90.0 + s), 1.0) for s, j in enumerate(jobs_)]
    assert runs[1].to_json()["heads"]["main"]["best_all"] == 91.0
    rows, studies = TABLE1.select_rows(["cbrs"]), TABLE1.studies(["fashion-lt"])
    results = TABLE1.plan(studies, rows, 2, []).results(runs)
    assert results.table()["fashion-lt"]["cbrs"].best_all.mean == 90.5
    md = TABLE1.report(results, studies, rows, []).markdown()
    assert "| All, best epoch* |" in md and "| fashion-lt | CB-RS | 80.5 ± 0.7 |" in md and "| 90.5 ± 0.7 |" in md
    assert "best epoch, chosen on the test set, as the original papers report" in md


def test_sign_flip_test_enumerates_every_sign_pattern():
    # +-1 +-2 +-3: |sum| >= 6 only for all-plus and all-minus, 2 of 8 patterns
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == 0.25
    # the 8 sums are +-6, +-4, +-2, 0, 0: |sum| >= 4 for 4 of them, >= 2 for 6
    assert sign_flip_p(np.array([-1.0, 2.0, 3.0])) == 0.5
    assert sign_flip_p(np.array([1.0, -2.0, 3.0])) == 0.75
    assert sign_flip_p(np.full(5, 0.3)) == 2 / 32
    assert sign_flip_p(np.array([2.0, -2.0, 2.0, -2.0])) == 1.0


def test_sign_flip_test_falls_back_to_a_seeded_monte_carlo_for_many_pairs():
    consistent = sign_flip_p(np.full(25, 1.0))
    assert consistent == 1 / 200_001  # no draw reaches all-plus or all-minus
    noise = np.random.default_rng(1).normal(size=25)
    assert sign_flip_p(noise) == sign_flip_p(noise) > 0.05


def test_paired_difference_keeps_only_seeds_where_both_runs_are_healthy():
    a = [run(60.0), run(55.0), run(70.0), run(90.0, collapsed=True), run(50.0)]
    b = [run(58.0), run(55.0), DIVERGED, run(40.0), run(51.0)]
    pair = paired_difference(a, b)
    assert pair.seeds == 3 and (pair.wins, pair.ties, pair.losses) == (1, 1, 1)
    assert pair.mean == pytest.approx(1 / 3) and pair.std == pytest.approx(np.std([2, 0, -1], ddof=1))
    assert pair.p == sign_flip_p(np.array([2.0, 0.0, -1.0]))
    assert paired_difference([run(1.0)], [run(2.0)]).p is None


def test_table1_pairs_csa_with_each_baseline_seed_by_seed():
    runs = [result("cmnist-lt", r, s, {"ce": run(40.0 + s), "crt": run(60.0 + 2 * s), "main": run(45.0),
                                        "balanced": run(59.0 + 3 * s), "uniform": run(50.0), "ensemble": run(55.0)})
            for r in ("crt", "cbrs", "csa") for s in range(4)]
    rows = TABLE1.select_rows(["ce", "crt", "cbrs", "csa"])
    studies = TABLE1.studies(["cmnist-lt"])
    results = TABLE1.plan(studies, rows, 4, []).results(runs)
    pairs = {(a, b): pair for ((_, a), (_, b)), pair in results.paired.items()}
    assert list(pairs) == [("csa", "ce"), ("csa", "crt"), ("csa", "cbrs"), ("cbrs", "ce"), ("cbrs", "crt")]
    assert (pairs["cbrs", "crt"].mean, pairs["cbrs", "crt"].losses) == (-18.0, 4)  # 45 against 60, 62, 64, 66
    assert pairs["csa", "crt"].mean == pytest.approx(0.5)  # differences -1, 0, 1, 2
    assert (pairs["csa", "crt"].wins, pairs["csa", "crt"].ties, pairs["csa", "crt"].losses) == (2, 1, 1)
    assert pairs["csa", "ce"].wins == 4 and pairs["csa", "ce"].p == 2 / 16
    md = TABLE1.report(results, studies, rows, []).markdown()
    assert "| cmnist-lt | CSA − cRT | 4 | +0.5 ± 1.3 | 2 / 1 / 1 | 0.750 |" in md
    strong = dataclasses.replace(results, paired={(("cmnist-lt", "csa"), ("cmnist-lt", "ce")):
                                                  dataclasses.replace(pairs["csa", "ce"], p=2 / 2**20)})
    assert "| 4 / 0 / 0 | < 0.001 |" in TABLE1.report(strong, studies, rows, []).markdown()
    unpaired = TABLE1.plan(studies, TABLE1.select_rows(["ce", "crt"]), 4, []).results(runs)
    assert "Paired by seed" not in TABLE1.report(unpaired, studies, TABLE1.select_rows(["ce", "crt"]), []).markdown()


def test_unknown_study_method_lists_known():
    with pytest.raises(ValueError, match="unknown Table 1 method 'bbn'; known: ce, crt, cbrs, csa"):
        TABLE1.select_rows(["bbn"])


def test_table1_end_to_end_on_generated_mnist_files(tmp_path):
    """`reproduce table1 --mnist-root` on tiny generated MNIST idx files: CMNIST-LT rows beside the release's numbers."""
    import numpy as np

    from test_sources import write_idx

    rng = np.random.default_rng(0)
    (tmp_path / "mnist").mkdir()
    for split, n in (("train", 40), ("t10k", 10)):
        labels = np.repeat(np.arange(10), n).astype(np.uint8)
        images = rng.integers(0, 50, (len(labels), 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 255
        write_idx(tmp_path / "mnist" / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / "mnist" / f"{split}-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "out"
    table = TABLE1.run(["cmnist-lt"], 1, 1, out, ["train.epochs=1"], ["ce", "crt", "cbrs"],
                       mnist_root=str(tmp_path / "mnist"))
    assert set(table["cmnist-lt"]) == {"ce", "crt", "cbrs"}
    md = (out / "table1.md").read_text()
    assert "| cmnist-lt | CE |" in md and "| 39.1 | 94.4 / 12.2 / 15.2 |" in md and "Command:" in md
    assert (out / "runs" / "cmnist-lt" / "crt" / "seed0" / "metrics.json").exists()
    # rebuilt from the finished runs, the report still gives their training time, not the seconds it took itself
    trained = json.loads((out / "table1.json").read_text())["runs"]
    again = TABLE1.run(["cmnist-lt"], 1, 1, out, ["train.epochs=1"], ["ce", "crt", "cbrs"], mnist_root=str(tmp_path / "mnist"))
    assert again == table
    rebuilt = json.loads((out / "table1.json").read_text())["runs"]
    assert [r["train_seconds"] for r in rebuilt] == [r["train_seconds"] for r in trained]
    total = sum(r["train_seconds"] for r in trained)
    assert f"training time of the runs that did not diverge: {total:.0f} s of worker time" in (out / "table1.md").read_text()


def test_seed_lists_name_themselves():
    from tailshift.reproduce.plan import seed_list
    from tailshift.reproduce.reports import seeds_note

    assert seed_list(3) == (0, 1, 2) and seed_list([5, 7]) == (5, 7)
    assert seeds_note(range(5)) == "5 seeds" and seeds_note(range(5, 20)) == "15 seeds (5-19)"
    assert seeds_note([0, 3, 7]) == "3 seeds (0, 3, 7)"


def test_a_seed_range_names_its_runs_by_seed_and_extends_a_study(tmp_path):
    rows = TABLE1.select_rows(["ce", "cbrs"])
    plan = plan_for(["fashion-lt"], [5, 6], [], rows)
    jobs = plan.jobs(tmp_path)
    assert sorted(j.key for j in jobs) == ["fashion-lt/cbrs/seed5", "fashion-lt/cbrs/seed6",
                                           "fashion-lt/crt/seed5", "fashion-lt/crt/seed6"]
    assert {j.resolve().seed for j in jobs} == {5, 6}
    runs = [result(j.study, j.run, j.seed, {"ce": run(40.0), "crt": run(50.0), "main": run(60.0)}) for j in jobs]
    assert plan.results(runs).aggregates["fashion-lt", "cbrs"].runs == 2


def test_aggregate_counts_runs_scored_on_an_untrained_head_apart():
    agg = aggregate([run(50.0), run(20.0, untrained=True), run(30.0, collapsed=True, untrained=True),
                     run(60.0, collapsed=True)])
    assert (agg.runs, agg.diverged, agg.collapsed, agg.untrained) == (4, 0, 1, 2)
    assert agg.all.values == (50.0,)


def test_one_healthy_run_is_shown_without_a_spread():
    from tailshift.reproduce.reports import fmt

    agg = aggregate([run(13.7), run(1.2, untrained=True)])
    assert fmt(agg.all) == "13.7 (1 run)"
    assert fmt(aggregate([run(50.0), run(60.0)]).all) == "55.0 ± 7.1"


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_a_terminated_study_stops_its_worker_processes(tmp_path):
    from test_saved_run import write_npz

    write_npz(tmp_path / "data.npz")
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": "npz", "root": str(tmp_path / "data.npz"), "longtail": {"profile": "none"}},
        "model": {"name": "lenet2d"}, "method": {"name": "ce"}, "device": "cpu",
        "train": {"epochs": 100000, "batch_size": 16}}))  # far longer than the test waits
    jobs = ", ".join(f"Job('s', 'r{i}', 0, {str(config)!r}, ('output={tmp_path / f'run{i}'}',))" for i in range(2))
    study = subprocess.Popen([sys.executable, "-c", f"from tailshift.reproduce.jobs import Job, run_jobs\n"
                              f"run_jobs([{jobs}], 2)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"run{i}" / "curve.json").exists() for i in range(2)):  # both workers train
            assert time.monotonic() < deadline and study.poll() is None, "the workers never started training"
            time.sleep(0.2)
        workers = _children(study.pid)
        assert len([w for w in workers if _alive(w)]) >= 2
        study.send_signal(signal.SIGTERM)
        assert study.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:  # whatever happened, nothing of the study outlives the test
        for pid in {study.pid, *workers, *_children(study.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_an_interrupted_wait_on_torchrun_terminates_it_before_raising():
    from tailshift.reproduce import jobs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    wait = child.wait
    interrupted = []

    def wait_until_interrupted(timeout=None):
        if not interrupted:  # the first wait is the study's, cut short by SIGTERM
            interrupted.append(True)
            raise SystemExit(128 + signal.SIGTERM)
        return wait(timeout)

    child.wait = wait_until_interrupted
    try:
        with pytest.raises(SystemExit):
            jobs._wait_or_terminate(child, grace_seconds=30)
        assert child.returncode == -signal.SIGTERM  # asked to stop, not killed
    finally:
        child.kill()
