import pytest

from tailshift.reproduce.common import aggregate, config_path
from tailshift.reproduce.table1 import collect, jobs_for, markdown, select_rows


def run(all_, collapsed=False):
    return {"all": all_, "many": all_, "med": all_, "few": None, "collapsed": collapsed}


def test_aggregate_leaves_diverged_and_collapsed_runs_out_of_the_mean():
    agg = aggregate([run(50.0), run(60.0), run(10.0, collapsed=True), {"diverged": True}])
    assert (agg["runs"], agg["diverged"], agg["collapsed"]) == (4, 1, 1)
    assert agg["all"]["mean"] == 55.0 and agg["all"]["std"] == pytest.approx(7.0711, abs=1e-4)
    assert agg["few"]["mean"] is None
    assert agg["all_runs"] == [50.0, 60.0, 10.0, None]


def test_table1_jobs_cover_every_dataset_run_and_seed_longest_first(tmp_path):
    jobs = jobs_for(["fashion-lt", "cfashion-lt"], 2, tmp_path, ["train.epochs=1"], rows=select_rows(["ce", "crt", "cbrs"]))
    assert len(jobs) == 2 * 2 * 2  # CE and cRT share the crt runs
    assert all("cbrs" in j.key for j in jobs[:4])
    assert all(config_path(j.config).exists() for j in jobs)
    assert jobs[0].resolve().train.epochs == 1


def test_table_rows_come_from_the_right_heads_and_print_beside_the_paper():
    results = [{"key": f"fashion-lt/{r}/seed{s}", "diverged": False,
                "heads": {"ce": run(40.0 + s), "crt": run(60.0 + s), "main": run(80.0 + s)}}
               for r in ("crt", "cbrs") for s in range(2)]
    table = collect(results, ["fashion-lt"], 2, select_rows(None))
    assert table["fashion-lt"]["ce"]["all"]["mean"] == 40.5 and table["fashion-lt"]["cbrs"]["all"]["mean"] == 80.5
    md = markdown(table, {"fashion-lt": {"ce": [45.6, 94.7, 43.1, 0.0]}}, "T", "note")
    assert "| fashion-lt | CE | 40.5 ± 0.7 |" in md and "| 45.6 | 94.7 / 43.1 / 0.0 |" in md


def test_unknown_study_method_lists_known():
    with pytest.raises(ValueError, match="known: ce, crt, cbrs, csa"):
        select_rows(["bbn"])
