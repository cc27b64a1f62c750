import io
import re

from conftest import tiny_prepared

from tailshift.config import build_config
from tailshift.engine import train
from tailshift.progress import Progress, RunCounter, epoch_line
from tailshift.reproduce import jobs as reproduce_jobs
from tailshift.reproduce.jobs import Job, JobResult
from tailshift.reproduce.statistics import HeadScores


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _cfg(tmp_path, *overrides):
    return build_config({"output": str(tmp_path / "run"), "device": "cpu"},
                        ["train.epochs=2", "train.batch_size=32", "train.eval_every=2", *overrides])


def test_train_prints_one_line_per_epoch_when_stdout_is_not_a_terminal(tmp_path, capsys):
    train(_cfg(tmp_path, "method.name=csa", "method.params={warmup_epochs: 1}"), tiny_prepared(channels=3))
    note, *lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"train: [\d,]+ trainable parameters", note) and len(lines) == 2
    assert re.fullmatch(r"train epoch 1/2  loss \d+\.\d{4}  lr 0\.1  \d+\.\d s", lines[0])
    assert re.fullmatch(r"train epoch 2/2  loss \d+\.\d{4}  lr 0\.1  \d+\.\d s  balanced All/Many/Med/Few "
                        r"(\d+\.\d\d/){3}\d+\.\d\d  uniform .*  ensemble All/Many/Med/Few .*", lines[1])


def test_no_lines_with_progress_off_or_on_a_terminal(tmp_path, capsys):
    train(_cfg(tmp_path, "progress=false"), tiny_prepared())
    assert capsys.readouterr().out == ""
    assert not Progress(True, Terminal()).lines and Progress(True, io.StringIO()).lines


def test_epoch_line_shows_missing_groups_as_dashes():
    record = {"stage": "retrain", "epoch": 3, "loss": 0.5, "lr": 0.01, "seconds": 1.25,
              "test": {"main": {"all": 50.0, "many": 70.0, "med": None, "few": 10.0}}}
    assert epoch_line(record, 4) == "retrain epoch 3/4  loss 0.5000  lr 0.01  1.2 s  main All/Many/Med/Few 50.00/70.00/-/10.00"


def test_reproduce_prints_one_line_per_finished_run(monkeypatch, capsys):
    jobs = [Job("fashion-lt", m, 0, "table1/fashion-lt_ce") for m in ("ce", "csa", "crt")]
    results = {"fashion-lt/ce/seed0": dict(diverged=False, seconds=12.0, head="main",
                                           heads={"main": HeadScores(all=51.234)}),
               "fashion-lt/csa/seed0": dict(diverged=True, seconds=3.0),
               "fashion-lt/crt/seed0": dict(diverged=False, seconds=200.0, head="retrained",
                                            heads={"retrained": HeadScores(all=66.0)})}
    monkeypatch.setattr(reproduce_jobs, "_run_job", lambda job: JobResult(job, **results[job.key]))
    assert [r.key for r in reproduce_jobs.run_jobs(jobs, 1)] == [j.key for j in jobs]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/3] fashion-lt/ce/seed0  main head All 51.23  12 s  2 runs left, about 24 s left"
    assert lines[1] == "[2/3] fashion-lt/csa/seed0  diverged  3 s  1 run left, about 8 s left"
    assert lines[2] == "[3/3] fashion-lt/crt/seed0  retrained head All 66.00  3.3 min  0 runs left, about 0 s left"


def test_run_counter_is_silent_on_a_terminal():
    stream = Terminal()
    RunCounter(1, stream=stream).finished("a", 1.0, "diverged")
    assert stream.getvalue() == ""


def test_run_lines_share_the_time_left_among_workers_and_name_an_untrained_head():
    stream = io.StringIO()
    counter = RunCounter(5, workers=2, stream=stream)
    result = JobResult(Job("s", "a", 0, "table1/fashion-lt_ce"), diverged=False, seconds=40.0, head="balanced",
                       heads={"balanced": HeadScores(all=10.0, untrained=True)})
    counter.finished(result.key, result.seconds, result.summary())
    assert stream.getvalue() == ("[1/5] s/a/seed0  balanced head All 10.00 (head never trained)  40 s  4 runs left, "
                                 "about 80 s left\n")
