"""Run tracking (run.json, TensorBoard curves, MLflow) and progress on long work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import blendrank
from blendrank import tracking
from blendrank.cli.main import app
from blendrank.data.synthetic import two_type_log
from blendrank.progress import StepProgress

runner = CliRunner()


def train_cli(method: str, log: Path, out: Path, *args: str):
    """``blendrank train --method METHOD --data LOG --out OUT ARGS…`` in this process."""
    return runner.invoke(app, ["train", "--method", method, "--data", str(log), "--out", str(out), *args])


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    pq.write_table(two_type_log(200, L=5), tmp_path / "log.parquet")
    return tmp_path / "log.parquet"


def test_run_record_has_what_reproduces_a_run() -> None:
    rec = tracking.run_record(
        "train",
        {"seed": 3, "stage2": {"beta": 0.1}},
        3,
        argv=["blendrank", "train"],
        method="grade",
    )
    assert (
        rec["command"] == "train"
        and rec["argv"] == ["blendrank", "train"]
        and rec["method"] == "grade"
    )
    assert rec["blendrank_version"] == blendrank.__version__ and rec["seed"] == 3
    assert rec["config"] == {"seed": 3, "stage2": {"beta": 0.1}}
    assert datetime.fromisoformat(rec["timestamp"]).tzinfo is not None
    git = tracking.git_commit()
    if git is None:
        assert "git" not in rec
    else:
        assert rec["git"] == git and len(git["commit"]) == 40


def test_git_commit_is_absent_outside_a_checkout(tmp_path: Path) -> None:
    assert tracking.git_commit(tmp_path) is None
    # A git repository that does not track the package's files (an install inside some repo).
    if subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        (tmp_path / "__init__.py").write_text("")
        assert tracking.git_commit(tmp_path) is None


def test_train_records_run_json(tmp_path: Path, small_log: Path) -> None:
    out = tmp_path / "s"
    r = train_cli("static_search", small_log, out, "--set", "budget=10", "--set", "seed=4")
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "run.json").read_text())
    assert (
        rec["command"] == "train"
        and rec["method"] == "static_search"
        and rec["data"] == str(small_log)
    )
    assert rec["config"]["budget"] == 10 and rec["seed"] == 4 and rec["config"]["seed"] == 4
    assert rec["objective_source"].startswith("default")


def test_bench_prints_a_line_per_method_and_records_run_json(
    tmp_path: Path, small_log: Path
) -> None:
    out = tmp_path / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--data",
            str(small_log),
            "--out",
            str(out),
            "--methods",
            "production,static_search,ltr",
            "--set",
            "n_boot=100",
            "--set",
            "static_search.budget=10",
            "--set",
            "grade.stage1.epochs=1",
            "--seed",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    text = flat(r.output)
    assert "static_search: started" in text and "ltr: started" in text
    assert "ltr: done in" in text and " s)" in text  # static_search's line carries its seconds
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "bench" and rec["seed"] == 2 and rec["config"]["methods"][-1] == "ltr"


def test_world_bench_reports_each_method_started_and_done(tmp_path: Path) -> None:
    from blendrank.bench.world import BenchConfig, run_world_bench

    lines: list[str] = []
    cfg = BenchConfig(
        preset="quick",
        predictor="world",
        guardrails={},
        eval_requests=100,
        valid_requests=50,
        n_boot=100,
        oracle_grid_points=20,
        oracle_refine=0,
        static_search={"budget": 10},
        methods=["production", "static_search"],
        world_overrides=["n_items=200", "n_users=100", "candidates=10", "page_size=5"],
    )
    run_world_bench(cfg, tmp_path, log=lines.append)
    assert "[1/2] production: started" in lines and "[2/2] static_search: started" in lines
    assert any(
        line.startswith("[2/2] static_search: done in ") and line.endswith(" s") for line in lines
    )


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_curves_log_each_stage_at_its_step() -> None:
    w = FakeWriter()
    curves = tracking.TensorBoardCurves("unused", writer=w)
    curves({"stage": 1, "epoch": 0, "lambda_loss": 0.7})
    curves(
        {
            "stage": 2,
            "step": 10,
            "reward": 1.5,
            "kl": 0.01,
            "guard_ok": True,
            "mean_weights": [0.5, 0.5],
        }
    )
    curves({"note": "no step"})
    curves.close()
    assert w.scalars == [
        ("stage1/lambda_loss", 0.7, 0),
        ("stage2/reward", 1.5, 10),
        ("stage2/kl", 0.01, 10),
    ]
    assert w.closed


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed"
)
def test_tensorboard_flag_without_tensorboard_is_a_clear_error(
    tmp_path: Path, small_log: Path
) -> None:
    r = train_cli("grade", small_log, tmp_path / "o", "--tensorboard", str(tmp_path / "tb"))
    assert r.exit_code == 1, r.output
    assert "--tensorboard needs the tensorboard package" in flat(r.output)
    assert not (tmp_path / "o").exists()  # failed before any work


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_tensorboard_flag_writes_event_files(tmp_path: Path, small_log: Path) -> None:
    r = train_cli("grade", small_log, tmp_path / "o", "--set", "stage1.epochs=1", "--set", "stage2.steps=3",
                  "--tensorboard", str(tmp_path / "tb"))
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_mlflow_flag_without_mlflow_is_a_clear_error(tmp_path: Path, small_log: Path) -> None:
    r = train_cli("static_search", small_log, tmp_path / "o", "--mlflow")
    assert r.exit_code == 1, r.output
    assert "--mlflow needs the mlflow package" in flat(r.output)


class FakeMlflow:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start_run(self, run_name: str) -> Any:
        self.calls.append(("start", run_name))
        fake = self

        class Run:
            def __enter__(self) -> None:
                return None

            def __exit__(self, *exc: object) -> None:
                fake.calls.append(("end", None))

        return Run()

    def log_params(self, params: dict) -> None:
        self.calls.append(("params", params))

    def log_metrics(self, metrics: dict) -> None:
        self.calls.append(("metrics", metrics))

    def log_artifacts(self, path: str) -> None:
        self.calls.append(("artifacts", path))


def test_mlflow_logs_flattened_params_final_metrics_and_artifacts(tmp_path: Path) -> None:
    client = FakeMlflow()
    tracking.log_mlflow(
        "train grade",
        {"method": "grade", "stage2": {"beta": 0.1, "steps": 5}},
        {"stage2_reward": 1.25},
        tmp_path,
        client=client,
    )
    assert client.calls == [
        ("start", "train grade"),
        ("params", {"method": "grade", "stage2.beta": "0.1", "stage2.steps": "5"}),
        ("metrics", {"stage2_reward": 1.25}),
        ("artifacts", str(tmp_path)),
        ("end", None),
    ]


def test_progress_off_a_terminal_prints_a_line_every_tenth() -> None:
    lines: list[str] = []
    with StepProgress("grade", 50, write=lines.append, terminal=False) as bar:
        for done in range(1, 51):
            bar.update(done)
    assert len(lines) == 10
    assert lines[0].startswith("grade: 5/50 (10%) in ") and lines[-1].startswith(
        "grade: 50/50 (100%)"
    )


def test_progress_jumps_print_one_line_and_nothing_without_steps() -> None:
    lines: list[str] = []
    with StepProgress("x", 10, write=lines.append, terminal=False) as bar:
        bar.update(7)  # crossed seven tenths at once: one line
        bar.update(7)
        bar.update(10)
    assert [line.split(" in ")[0] for line in lines] == ["x: 7/10 (70%)", "x: 10/10 (100%)"]
    with StepProgress("none", 0, write=lines.append, terminal=False) as bar:
        bar.update(1)
    assert len(lines) == 2


def test_train_off_a_terminal_prints_periodic_progress(tmp_path: Path, small_log: Path) -> None:
    r = train_cli("grade", small_log, tmp_path / "o", "--set", "stage1.epochs=1", "--set", "stage2.steps=19",
                  "--set", "log_every=1")
    assert r.exit_code == 0, r.output
    text = flat(r.output)
    assert "grade: 2/20 (10%)" in text and "grade: 20/20 (100%)" in text


def test_grade_progress_counts_epochs_then_steps() -> None:
    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.bench.fit import grade_steps

    cfg = GRADEConfig.model_validate({"stage1": {"epochs": 3}, "stage2": {"steps": 100}})
    assert grade_steps(cfg) == 103
    assert grade_steps(cfg, {"stage": 1, "epoch": 0}) == 1
    assert grade_steps(cfg, {"stage": 1}) == 3  # Stage 1's closing row
    assert grade_steps(cfg, {"stage": 2, "step": 9}) == 13
    assert grade_steps(cfg, {"stage": 2, "prior_model": "calibrated", "prior_r2": 0.1}) == 3  # before step 0
    assert grade_steps(cfg, {"stage": 2, "seconds": 1.0}) == 103  # Stage 2's closing row
