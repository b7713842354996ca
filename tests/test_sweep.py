"""Sweeps: grid expansion, resume without recomputation, retries, gathering, spec checks, and a
crash mid-work through submitit's local executor (on the `sweep_fixture` stand-in experiment)."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import sweep_fixture

from experiments.executors import SequentialExecutor, SubmititExecutor, run_cell
from experiments.sweep import IncompleteSweepError, done_run, gather, main, run_folders, run_sweep
from experiments.sweep_spec import SpecError, SweepSpec, check_spec, expand, load_spec
from mech.io.provenance import is_stale, read_status


def _spec(grid: dict, base: dict | None = None, **kw) -> SweepSpec:
    return SweepSpec(name="s", experiment="sweep_fixture", base=base or {}, grid=grid, **kw)


@pytest.fixture(autouse=True)
def calls():
    sweep_fixture.CALLS.clear()
    return sweep_fixture.CALLS


def _cell_record(report, index: int) -> dict:
    return json.loads((Path(report.cells[index].folder) / "cell.json").read_text())


def test_grid_expands_in_order_last_field_fastest(tmp_path):
    spec = check_spec(_spec({"seed": [0, 1, 2], "scale": [1, 2.5]}))
    cells = expand(spec, tmp_path)
    assert [tuple(c.values.values()) for c in cells] == [
        (0, 1.0), (0, 2.5), (1, 1.0), (1, 2.5), (2, 1.0), (2, 2.5)
    ]  # fmt: skip
    assert [c.index for c in cells] == list(range(6))
    assert [c.path.name[:4] for c in cells] == [f"{i:03d}-" for i in range(6)]
    assert len({c.path.name[4:] for c in cells}) == 6
    assert expand(spec, tmp_path) == cells  # deterministic names


def test_values_are_converted_to_field_types():
    spec = check_spec(_spec({"tags": [["a", "b"], "c"]}, base={"scale": 2}))
    assert spec.grid["tags"] == [("a", "b"), ("c",)]  # lists -> tuples; a scalar -> a 1-tuple
    assert spec.base["scale"] == 2.0 and isinstance(spec.base["scale"], float)


def test_finished_cells_are_never_recomputed(tmp_path, calls):
    spec = _spec({"seed": [0, 1], "scale": [1.0, 2.0]})
    first = run_sweep(spec, tmp_path)
    assert [c.status for c in first.cells] == ["done"] * 4 and len(calls) == 4
    folders = {c.index: run_folders(Path(c.folder)) for c in first.cells}
    second = run_sweep(spec, tmp_path)
    assert len(calls) == 4
    assert {c.index: run_folders(Path(c.folder)) for c in second.cells} == folders
    assert [c.attempts for c in second.cells] == [1] * 4
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [c["status"] for c in sweep["cells"]] == ["done"] * 4


def test_failed_cell_is_retried_and_its_failed_run_kept(tmp_path, calls):
    report = run_sweep(_spec({"seed": [0, 1], "fail_first": [False, True]}), tmp_path)
    assert [c.status for c in report.cells] == ["done"] * 4
    assert [c.attempts for c in report.cells] == [1, 2, 1, 2]
    flaky = report.cells[1]
    assert flaky.errors == ["RuntimeError: fixture failure (seed 0)"]
    states = [read_status(p)["status"] for p in run_folders(Path(flaky.folder))]
    assert states == ["failed", "done"]  # the failure stays as a record
    attempts = _cell_record(report, 1)["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "done"]
    assert list(attempts[0]["run_folders"].values()) == ["failed"]


def test_retries_within_a_second_each_leave_their_own_run_folder(tmp_path):
    """Rounds follow each other without waiting: RunDir gives the same config again within a
    second its own folder (`-2`, `-3`...), so every failed attempt stays as a record."""
    report = run_sweep(_spec({"fail": [True]}, retries=10), tmp_path)
    cell = report.cells[0]
    assert cell.attempts == 11 and cell.status == "failed"
    folders = run_folders(Path(cell.folder))
    attempts = _cell_record(report, 0)["attempts"]
    assert [list(a["run_folders"]) for a in attempts] == [[str(p)] for p in folders]  # attempt order
    assert [read_status(p)["status"] for p in folders] == ["failed"] * 11


def test_run_folders_sort_in_creation_order_past_ten_in_a_second(tmp_path):
    base = "20250101-120000-12345678"  # an all-digit hash must not pass for a `-<n>` suffix
    names = [base, *(f"{base}-{n}" for n in range(2, 12)), "20250101-120001-0a1b2c3d"]
    for name in reversed(names):
        (tmp_path / "exp" / name).mkdir(parents=True)
        (tmp_path / "exp" / name / "run.json").write_text("{}")
    assert [p.name for p in run_folders(tmp_path)] == names


def test_always_failing_cell_is_reported_and_others_finish(tmp_path):
    report = run_sweep(_spec({"seed": [0, 1], "fail": [False, True]}, retries=2), tmp_path)
    assert [c.status for c in report.cells] == ["done", "failed", "done", "failed"]
    assert [c.attempts for c in report.failed] == [3, 3]
    assert report.failed[0].errors == ["RuntimeError: fixture failure (seed 0)"] * 3
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [c["status"] for c in sweep["cells"]] == ["done", "failed", "done", "failed"]
    assert sorted(gather(tmp_path / "s")["cell"].unique()) == [0, 2]


def test_gather_says_which_cells_it_left_out_and_why(tmp_path):
    report = run_sweep(_spec({"fail": [False, True], "seed": [0, 1]}, retries=0), tmp_path)
    assert [c.status for c in report.cells] == ["done", "done", "failed", "failed"]
    (done_run(Path(report.cells[1].folder)) / "results.csv").unlink()  # done, but wrote no rows
    never = Path(report.cells[3].folder)  # as if the sweep had stopped before cell 3
    shutil.rmtree(never / "sweep_fixture")
    (never / "cell.json").write_text(
        json.dumps({"index": 3, "values": report.cells[3].values, "attempts": []})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = gather(report.path)
    assert frame["cell"].unique().tolist() == [0]
    skipped = {c.index: (c.reason, c.detail) for c in frame.attrs["skipped"]}
    assert {i: reason for i, (reason, _) in skipped.items()} == {
        1: "no results.csv",
        2: "failed",
        3: "not run",
    }
    assert skipped[2][1] == "attempt 1: RuntimeError: fixture failure (seed 0)"
    record = json.loads((report.path / "gather.json").read_text())
    assert record["gathered"] == [0] and record["cells"] == 4 and record["rows"] == 2
    assert [(c["index"], c["reason"]) for c in record["skipped"]] == [
        (1, "no results.csv"),
        (2, "failed"),
        (3, "not run"),
    ]


def test_strict_gather_raises_naming_the_left_out_cells(tmp_path, capsys):
    spec = _spec({"fail": [False, True]}, retries=0)
    with pytest.raises(
        IncompleteSweepError, match=r"1 cell\(s\).*cell 1 \(fail=True\): failed: attempt 1: Runtime"
    ) as err:
        run_sweep(spec, tmp_path, strict=True)
    assert [c.index for c in err.value.skipped] == [1]
    assert not (tmp_path / "s" / "results.csv").exists() and not (tmp_path / "s" / "gather.json").exists()
    assert gather(tmp_path / "s")["cell"].unique().tolist() == [0]  # not strict: the done cell's rows
    complete = run_sweep(_spec({"seed": [0]}), tmp_path / "ok", strict=True)
    assert complete.skipped == [] and len(pd.read_csv(complete.results)) == 2
    path = tmp_path / "cli.json"
    path.write_text(
        json.dumps({"experiment": "sweep_fixture", "retries": 0, "grid": {"fail": [False, True]}})
    )
    assert main([str(path), "--out", str(tmp_path / "out"), "--strict"]) == 1
    assert "cell 1 (fail=True): failed" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cli" / "results.csv").exists()


def test_sequential_crash_is_injected_on_the_first_attempt_only(tmp_path, calls):
    spec = _spec({"seed": [0, 1]}, retries=0)
    report = run_sweep(spec, tmp_path, executor=SequentialExecutor(), crash={1: 0.0})
    assert [c.status for c in report.cells] == ["done", "failed"]
    assert "deliberate crash of cell 1" in report.cells[1].errors[0]
    assert len(calls) == 1 and run_folders(Path(report.cells[1].folder)) == []  # raised before main
    # Running the same command again: the cell's log says it was attempted, so no second crash.
    again = run_sweep(spec, tmp_path, executor=SequentialExecutor(), crash={1: 0.0})
    assert [c.status for c in again.cells] == ["done", "done"] and again.cells[1].attempts == 2


def test_gather_adds_cell_columns(tmp_path):
    report = run_sweep(_spec({"seed": [0, 1], "tags": [["a", "b"], ["c"]]}, base={"scale": 2}), tmp_path)
    frame = gather(report.path)
    assert list(frame.columns) == ["cell", "cell_seed", "cell_tags", "seed", "metric", "value"]
    assert frame.shape == (8, 6)
    assert frame["cell_tags"].tolist() == ["a,b", "a,b", "c", "c"] * 2
    assert (frame["cell_seed"] == frame["seed"]).all()
    assert frame.query("cell == 3 and metric == 'y'")["value"].item() == 1 * 2.0 * 2
    pd.testing.assert_frame_equal(pd.read_csv(report.results), frame)


@pytest.mark.parametrize(
    "grid, base, field, message",
    [
        ({"sed": [0]}, {}, "grid.sed", "valid fields: seed, scale, tags"),
        ({"seed": ["zero"]}, {}, "grid.seed", "expected int, got 'zero'"),
        ({"seed": [0]}, {"scale": "big"}, "base.scale", "expected float"),
        ({"out": ["x"]}, {}, "grid.out", "sets each cell's `out`"),
        ({"seed": [0]}, {"out": "x"}, "base.out", "sets each cell's `out`"),
        ({"seed": []}, {}, "grid.seed", "empty list"),
        ({"seed": 3}, {}, "grid.seed", "expected a list"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, grid, base, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"experiment": "sweep_fixture", "base": base, "grid": grid}))  # JSON is YAML
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: {field}: ") and message in str(err.value)


def test_unknown_experiment_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"experiment": "no_such_experiment", "grid": {"seed": [0]}}))
    with pytest.raises(
        SpecError, match=r"bad\.json: experiment: unknown experiment 'no_such_experiment'.*narrow_kl"
    ):
        load_spec(path)
    path.write_text(json.dumps({"experiment": "sweep_fixture", "grdi": {}}))
    with pytest.raises(SpecError, match=r"bad\.json: grdi: unknown key"):
        load_spec(path)


def test_yaml_spec_defaults_and_real_experiment_fields(tmp_path):
    path = tmp_path / "kl.yaml"
    path.write_text("experiment: narrow_kl\nbase: {kl_weights: [0, 1], steps: 20}\ngrid: {seeds: [0, 1]}\n")
    spec = load_spec(path)
    assert (spec.name, spec.retries) == ("kl", 1)
    assert spec.base == {"kl_weights": (0.0, 1.0), "steps": 20} and spec.grid == {"seeds": [(0,), (1,)]}
    path.write_text("experiment: narrow_kl\ngrid: {trait: [misalignment, nice]}\n")
    with pytest.raises(SpecError, match=r"grid\.trait: expected Literal\['misalignment', 'technical'\]"):
        load_spec(path)


def test_resume_refuses_a_changed_spec(tmp_path):
    run_sweep(_spec({"seed": [0]}), tmp_path)
    with pytest.raises(SpecError, match="different base"):
        run_sweep(_spec({"seed": [0]}, base={"scale": 3.0}), tmp_path)


def test_cli_exits_nonzero_naming_failed_cells(tmp_path, capsys):
    path = tmp_path / "cli.json"
    path.write_text(
        json.dumps({"experiment": "sweep_fixture", "retries": 0, "grid": {"fail": [False, True]}})
    )
    assert main([str(path), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "results -> " in captured.out and "1/2 cells done" in captured.out
    assert "FAILED cell 1 {'fail': True}: RuntimeError: fixture failure" in captured.err


def test_job_function_pickles_by_reference():
    # submitit pickles the job function by reference: the job process imports it from its module.
    assert run_cell.__module__ == "experiments.executors"
    assert pickle.loads(pickle.dumps(run_cell)) is run_cell


@pytest.mark.seconds(12)
def test_submitit_local_sigkill_mid_work_is_retried(tmp_path):
    """8 cells as local submitit jobs, 2 at a time; cell 3 SIGKILLs itself 0.5 s into its first
    attempt (its run folder exists by then), leaving that folder stuck at `running`."""
    spec = _spec({"seed": [0, 1, 2, 3], "scale": [1.0, 2.0]}, base={"work_s": 1.5})
    report = run_sweep(spec, tmp_path, executor=SubmititExecutor(cluster="local", max_parallel=2),
                       crash={3: 0.5})  # fmt: skip
    assert [c.status for c in report.cells] == ["done"] * 8, [c.errors for c in report.cells]
    assert [c.attempts for c in report.cells] == [1, 1, 1, 2, 1, 1, 1, 1]
    crashed = report.cells[3]
    assert "died without a result" in crashed.errors[0]
    first, second = (read_status(p) for p in run_folders(Path(crashed.folder)))
    assert first["status"] == "running" and is_stale(first)
    assert second["status"] == "done"
    attempts = _cell_record(report, 3)["attempts"]
    assert attempts[0]["crash_after"] == 0.5 and attempts[1]["crash_after"] is None
    assert list(attempts[0]["run_folders"].values()) == ["running (stale)"]
    assert gather(report.path).shape == (16, 6)


@pytest.mark.slow
def test_toy_sweep_through_submitit_with_a_crash(tmp_path):
    """The shipped example spec on the toy organism (8 narrow_kl cells, a few minutes on 2 cores)."""
    spec = load_spec(Path(__file__).parents[1] / "experiments" / "sweeps" / "toy_narrow_kl.yaml")
    report = run_sweep(spec, tmp_path, executor=SubmititExecutor(cluster="local"), crash={3: 5.0})
    assert [c.status for c in report.cells] == ["done"] * len(report.cells)
    assert report.cells[3].attempts == 2 and len(report.cells) >= 8
    frame = gather(report.path)
    assert set(frame["cell"]) == set(range(len(report.cells)))


class _FakeJob:
    """A job that finished the moment it was submitted, recording the GPU it was pinned to."""

    def __init__(self, task, log: list) -> None:
        import os
        from types import SimpleNamespace

        self.job_id = f"fake-{task.index}"
        self.gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        log.append((task.index, self.gpu))
        self.paths = SimpleNamespace(result_pickle=SimpleNamespace(exists=lambda: True), stderr="-")
        self._polls = 0

    def done(self) -> bool:
        self._polls += 1
        return self._polls > 1  # still running at the first poll, so cells overlap

    def result(self):
        from experiments.executors import Outcome

        return Outcome("done", f"run-{self.job_id}", seconds=0.0)


def test_local_cells_are_pinned_one_per_gpu(tmp_path, monkeypatch):
    """Placement only (no GPU here): with GPUs listed, each running cell gets its own through
    CUDA_VISIBLE_DEVICES, never more cells at once than GPUs, and a finished cell's GPU is reused."""
    from experiments import executors
    from experiments.executors import CellTask, GpuPool, SubmititExecutor, visible_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    log: list = []
    fake = type("FakeExecutor", (), {"submit": lambda self, fn, task: _FakeJob(task, log)})()
    executor = SubmititExecutor(cluster="local", max_parallel=4, gpus=("0", "3"), poll_s=0.0)
    monkeypatch.setattr(SubmititExecutor, "executor", lambda self, sweep_dir: fake)
    tasks = [CellTask(index=i, attempt=0, experiment="x", overrides={}) for i in range(5)]
    outcomes = executor.run(tasks, tmp_path)
    assert [o.status for o in outcomes] == ["done"] * 5
    assert [gpu for _, gpu in log] == ["0", "3", "0", "3", "0"]  # two at a time, GPUs handed back
    assert "CUDA_VISIBLE_DEVICES" not in executors.os.environ  # set only while submitting
    log.clear()
    SubmititExecutor(cluster="local", max_parallel=2, gpus=(), poll_s=0.0).run(tasks[:2], tmp_path)
    assert [gpu for _, gpu in log] == [None, None]  # no GPUs: no pinning
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a, GPU-b")
    assert visible_gpus() == ("GPU-a", "GPU-b")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == ()
    pool = GpuPool(["0"])
    assert pool.acquire(1) == "0"
    with pytest.raises(RuntimeError, match="no free GPU for cell 2"):
        pool.acquire(2)
    with pytest.raises(ValueError, match="distinct"):
        GpuPool(["0", "0"])
