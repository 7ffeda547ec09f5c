"""Kill -9 and resume (docs/scaling.md): every trainer, killed right after a checkpoint and
restarted with the same command, reaches the result of an uninterrupted run with the same seed;
a checkpoint resumes only the data and objective it was written for; Ctrl-C says what was kept."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from jobs import ROOT, job_cmd, job_env, run_inline, run_job

STREAMED = ["--set", "data.shuffle_buffer_requests=200", "--set", "data.read_batch_rows=1000"]
# trainer, extra args, checkpoint every N steps, kill after the K-th checkpoint (where that is)
CASES = {
    "mtl": (["--batch", "256", "--epochs", "2"], 7, 2),  # mid epoch 1 (replays its shuffle)
    "ltr": (["--epochs", "2"], 3, 1),  # Stage 1, mid epoch 0
    "grade": (["--epochs", "1", "--steps", "6"], 3, 3),  # Stage 2, after step 3
    # streamed in buffers of 200 requests: the resumed position lies past the first buffer
    "grade_streamed_s1": (["--epochs", "2", "--steps", "2", *STREAMED], 3, 7),  # Stage 1 epoch 1, batch 5
    "grade_streamed_s2": (["--epochs", "1", "--steps", "6", *STREAMED], 3, 7),  # Stage 2, after step 3
    "integrated_rl": (["--steps", "6"], 4, 3),  # mid-way through the second round
}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(CASES))
def test_kill_9_and_resume_matches_uninterrupted(tmp_path: Path, world_log: Path, trainer: str):
    extra, every, kill_after = CASES[trainer]
    common = ["--trainer", trainer.split("_streamed")[0], "--data", str(world_log / "logs"), *extra]
    clean = run_inline([*common, "--out", str(tmp_path / "clean")])

    out = tmp_path / "killed"
    args = [*common, "--out", str(out), "--checkpoint-every", str(every)]
    proc = subprocess.Popen(job_cmd([*args, "--hang-after-checkpoint", str(kill_after)]), env=job_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        while line and "CHECKPOINTED" not in line:
            line = proc.stdout.readline() if proc.stdout else ""
        assert "CHECKPOINTED" in line, proc.stderr.read()[-3000:] if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoint.pt").is_file() and not (out / "result.json").exists()

    resumed = run_job(args)
    assert resumed["resumed"]  # it continued from the checkpoint, it did not start over
    assert not (out / "checkpoint.pt").exists()  # removed once the run completed
    np.testing.assert_allclose(resumed["losses"], clean["losses"], atol=1e-6, rtol=0)
    for k in clean["params"]:
        np.testing.assert_allclose(resumed["params"][k], clean["params"][k], atol=1e-6, rtol=0, err_msg=k)


# ------------------------------------------------------------- a checkpoint resumes only its run
GRADE_ARGS = ["--set", "stage1.epochs=1", "--set", "stage2.steps=6",
              "--set", "stage2.batch_size=64", "--set", "data.read_batch_rows=500",
              "--checkpoint-every", "2"]


def _split_dir(root: Path, seed: int) -> Path:
    """A train/valid/test directory (train --method grade streams its train.parquet)."""
    from blendrank.data.synthetic import two_type_log

    root.mkdir()
    for name in ("train", "valid", "test"):
        pq.write_table(two_type_log(300, seed=seed), root / f"{name}.parquet")
    return root


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    """Ctrl-C right after the ``saves``-th checkpoint (what a killed run leaves behind)."""
    from blendrank.checkpoint import Checkpointer

    save, count = Checkpointer.save, [0]

    def interrupted(self: Checkpointer, state: dict) -> None:
        save(self, state)
        count[0] += 1
        if count[0] == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", interrupted)


def test_train_resumes_only_the_data_and_objective_its_checkpoint_was_written_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`train` interrupted, then re-run on other data (or for another objective): a one-line error
    naming both and --no-resume, the checkpoint kept; the same data (also copied elsewhere)
    resumes to the uninterrupted result; --no-resume starts over on the other data."""
    from typer.testing import CliRunner

    from blendrank.algos.grade.trainer import GradePolicy
    from blendrank.checkpoint import Checkpointer
    from blendrank.cli.main import app
    from blendrank.objective import Objective

    a, b = _split_dir(tmp_path / "a", seed=0), _split_dir(tmp_path / "b", seed=1)
    run = CliRunner().invoke
    train = ["train", "--method", "grade", *GRADE_ARGS, "--out"]
    clean = run(app, [*train, str(tmp_path / "clean"), "--data", str(a)])
    assert clean.exit_code == 0, clean.output

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        first = run(app, [*train, str(out), "--data", str(a)])
    assert first.exit_code == 130, first.output
    checkpoint = (out / "checkpoint.pt").read_bytes()

    other = run(app, [*train, str(out), "--data", str(b)])
    text = " ".join(other.output.split())
    assert other.exit_code == 1 and "Traceback" not in other.output, other.output
    assert "checkpoint's data differs from this run's" in text and "--no-resume" in text, text
    for log in (a, b):
        assert f"{log / 'train.parquet'}, 2,400 rows" in text, text
    objective = tmp_path / "goals" / "other.yaml"  # not beside the data (it would be its default)
    objective.parent.mkdir()
    objective.write_text(Objective(value={"click": 1.0, "order": 4.0}).to_yaml())
    other = run(app, [*train, str(out), "--data", str(a), "--objective", str(objective)])
    text = " ".join(other.output.split())
    assert other.exit_code == 1 and "--no-resume" in text, other.output
    assert "checkpoint's objective differs from this run's" in text and '"order":4.0' in text, text
    assert (out / "checkpoint.pt").read_bytes() == checkpoint  # refused: nothing changed

    copied = tmp_path / "copy"
    shutil.copytree(a, copied)  # the same rows elsewhere (new mtimes): still this checkpoint's data
    loaded, load = [], Checkpointer.load
    monkeypatch.setattr(Checkpointer, "load", lambda self: loaded.append(load(self)) or loaded[-1])
    resumed = run(app, [*train, str(out), "--data", str(copied)])
    assert resumed.exit_code == 0, resumed.output
    assert loaded[0] is not None and loaded[0]["stage"] == 2  # continued, did not start over
    want = GradePolicy.load(tmp_path / "clean").policy.state_dict()
    got = GradePolicy.load(out).policy.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k

    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        assert run(app, [*train, str(out), "--data", str(a)]).exit_code == 130
    over = run(app, [*train, str(out), "--data", str(b), "--no-resume"])
    assert over.exit_code == 0, over.output


def test_fit_grade_on_a_table_checks_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The Python API's tables: another table of the same shape is refused; the same rows in other
    record batches resume."""
    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.grade.trainer import fit_grade
    from blendrank.data.synthetic import two_type_log
    from blendrank.errors import ConfigError

    cfg = GRADEConfig.model_validate({
        "seed": 0, "stage1": {"epochs": 1, "batch_size": 64},
        "stage2": {"steps": 4, "batch_size": 64, "num_generations": 4},
        "reward": {"a_prior": 0.0, "k": 4}})
    a, b = two_type_log(200, seed=0), two_type_log(200, seed=1)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit_grade(a, cfg, checkpoint_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(ConfigError, match=r"data differs .*table of 1,600 rows.*--no-resume"):
        fit_grade(b, cfg, checkpoint_dir=tmp_path, checkpoint_every=2)
    rechunked = pa.Table.from_batches(a.to_batches(max_chunksize=77))
    fit_grade(rechunked, cfg, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_data_digests_follow_the_rows_not_the_path(tmp_path: Path):
    from blendrank.data.fingerprint import data_input
    from blendrank.data.synthetic import two_type_log

    t = two_type_log(100)
    pq.write_table(t, tmp_path / "a.parquet")
    shutil.copy(tmp_path / "a.parquet", tmp_path / "copy.parquet")
    one = data_input(tmp_path / "a.parquet")
    assert data_input(tmp_path / "copy.parquet").digest == one.digest
    assert one.description == f"{tmp_path / 'a.parquet'}, 800 rows"
    pq.write_table(t.slice(0, 799), tmp_path / "a.parquet")  # one row fewer
    assert data_input(tmp_path / "a.parquet").digest != one.digest
    rechunked = pa.Table.from_batches(t.to_batches(max_chunksize=9))
    assert data_input(t).digest == data_input(rechunked).digest
    assert data_input(t).digest != data_input(t.slice(1)).digest


def test_sigint_during_train_prints_one_line_and_exits_130(tmp_path: Path):
    """Ctrl-C in a real `blendrank train` process: exit 130, no traceback, one line on stderr
    naming the kept checkpoint, its position, how to resume and --no-resume."""
    import sys
    import time

    from blendrank.checkpoint import checkpoint_position

    data, out = _split_dir(tmp_path / "a", seed=0), tmp_path / "out"
    cmd = [sys.executable, "-m", "blendrank.cli.main", "train", "--method", "grade",
           "--data", str(data), "--out", str(out), "--set", "stage1.epochs=1",
           "--set", "stage2.steps=5000", "--set", "stage2.batch_size=64", "--checkpoint-every", "1"]
    proc = subprocess.Popen(cmd, env=job_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (not (out / "checkpoint.pt").exists() and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    position = checkpoint_position(out)
    assert position is not None and position.startswith("stage ")
    assert lines[0] == (f"interrupted; kept the checkpoint {out / 'checkpoint.pt'} ({position}); "
                        "run the same command again to resume from it, or add --no-resume to "
                        "start over")


@pytest.mark.slow
def test_train_chaos_every_rerun_resumes_to_the_uninterrupted_result(tmp_path: Path):
    """20 runs of `blendrank train`, each stopped by SIGKILL or SIGINT at a random (seeded) point
    once it has started training (its first checkpoint is written): every SIGINT exits 130 with
    one line and no traceback; re-running the same command resumes (or starts over when nothing
    was kept) and writes the uninterrupted run's policy; a re-run on other data is refused."""
    import sys
    import time

    from blendrank.algos.grade.trainer import GradePolicy

    a, b = _split_dir(tmp_path / "a", seed=0), _split_dir(tmp_path / "b", seed=1)

    def command(out: Path, data: Path) -> list[str]:
        return [sys.executable, "-m", "blendrank.cli.main", "train", "--method", "grade",
                "--data", str(data), "--out", str(out), "--set", "stage1.epochs=2",
                "--set", "stage2.steps=600", "--set", "stage2.batch_size=64",
                "--set", "data.read_batch_rows=500", "--checkpoint-every", "3"]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=job_env(), cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=False)

    clean = run(command(tmp_path / "clean", a))
    assert clean.returncode == 0, clean.stderr[-3000:]
    want = GradePolicy.load(tmp_path / "clean").policy.state_dict()
    rng = np.random.default_rng(0)
    outcomes = []
    for trial in range(20):
        out = tmp_path / f"t{trial}"
        sig = signal.SIGKILL if trial % 2 else signal.SIGINT
        proc = subprocess.Popen(command(out, a), env=job_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while (not (out / "checkpoint.pt").exists() and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 3.0)))  # Stage 1, Stage 2, a checkpoint write, the end
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        finished = proc.returncode == 0
        if proc.returncode == -signal.SIGINT:  # landed in the interpreter's exit, the work done
            assert not stderr.strip() and (out / "policy.pt").is_file(), stderr[-3000:]
            finished = True
        elif sig == signal.SIGINT and not finished:
            assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
            assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr, stderr
        elif not finished:
            assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
        kept = (out / "checkpoint.pt").exists()
        outcomes.append("finished" if finished else "kept" if kept else "none")
        if kept and trial % 4 == 0:
            other = run(command(out, b))
            assert other.returncode == 1 and "--no-resume" in other.stderr, other.stderr[-3000:]
            assert "Traceback" not in other.stderr
        rerun = run(command(out, a))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        got = GradePolicy.load(out).policy.state_dict()
        for k in want:
            assert torch.equal(got[k], want[k]), (trial, k)
    assert outcomes.count("kept") >= 12, outcomes  # most interrupts left a checkpoint to resume


def test_an_interrupt_before_the_first_checkpoint_says_nothing_was_kept(tmp_path: Path):
    from blendrank.cli.interrupt import interrupted_message

    assert interrupted_message(tmp_path) == (
        f"interrupted before the first checkpoint; nothing was kept in {tmp_path}; run the same "
        "command again to start over")
