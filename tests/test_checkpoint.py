"""Checkpoints: atomic writes survive a crash mid-write, resume state round-trips, and a
NaN/inf loss or gradient stops training with the step and batch named, never saved."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from jobs import ROOT, job_env

from blendrank.algos.grade import trainer as grade_trainer
from blendrank.algos.grade.config import GRADEConfig
from blendrank.checkpoint import (
    CHECKPOINT_FILE,
    Checkpointer,
    NonFiniteError,
    check_finite,
    generator_state,
    rng_state,
    set_generator_state,
    set_rng_state,
)
from blendrank.data.synthetic import two_type_log
from blendrank.errors import ConfigError

GRADE = {"seed": 0, "log_every": 1, "stage1": {"epochs": 1, "batch_size": 64},
         "stage2": {"steps": 4, "batch_size": 64, "num_generations": 4},
         "reward": {"a_prior": 0.0, "k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}}


def _state(value: float, step: int = 1) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": step, "rng": rng_state()}


def _saved(path: Path) -> dict:
    return torch.load(path / CHECKPOINT_FILE, weights_only=True)["state"]


def test_a_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ck = Checkpointer(tmp_path, "t", "h", every=1)
    ck.save(_state(1.0))

    def torn(obj, f, *a, **k):  # write half a file, then die
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        ck.save(_state(2.0))
    monkeypatch.undo()
    assert _saved(tmp_path)["step"] == 1 and ck.load()["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # no temp file left


def test_kill_9_mid_write_keeps_the_previous_checkpoint(tmp_path: Path):
    code = textwrap.dedent(f"""
        import os, signal, torch
        from blendrank.checkpoint import Checkpointer
        ck = Checkpointer({str(tmp_path)!r}, "t", "h", every=1)
        ck.save({{"model": {{"w": torch.ones(3)}}, "step": 1, "rng": None}})
        def torn(obj, f, *a, **k):
            f.write(b"x" * 4096); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        torch.save = torn
        ck.save({{"model": {{"w": torch.zeros(3)}}, "step": 2, "rng": None}})
    """)
    r = subprocess.run([sys.executable, "-c", code], env=job_env(), cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    state = Checkpointer(tmp_path, "t", "h").load()
    assert state is not None and state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))


def test_rng_and_generator_states_round_trip(tmp_path: Path):
    ck = Checkpointer(tmp_path, "t", "h")
    gen = np.random.default_rng(5)
    gen.random()
    ck.save({"gen": generator_state(gen), "rng": rng_state()})
    expect = (torch.rand(3), np.random.rand(), gen.random())
    state = ck.load()
    set_rng_state(state["rng"])
    set_generator_state(gen, state["gen"])
    assert torch.equal(torch.rand(3), expect[0]) and np.random.rand() == expect[1] and gen.random() == expect[2]


def test_checkpoint_of_another_run_is_a_clear_error(tmp_path: Path):
    Checkpointer(tmp_path, "grade", "aaa").save(_state(1.0))
    with pytest.raises(ConfigError, match="checkpoint of another run.*--no-resume"):
        Checkpointer(tmp_path, "grade", "bbb").load()
    assert Checkpointer(tmp_path, "grade", "bbb", resume=False).load() is None
    with pytest.raises(ConfigError, match="checkpoint_every"):
        Checkpointer(tmp_path, "grade", "aaa", every=0)


def test_non_finite_state_is_never_written(tmp_path: Path):
    ck = Checkpointer(tmp_path, "t", "h")
    ck.save(_state(1.0))
    with pytest.raises(NonFiniteError, match="model.w"):
        ck.save(_state(math.nan, step=2))
    assert _saved(tmp_path)["step"] == 1
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, math.inf])
    with pytest.raises(NonFiniteError, match="step 7.*non-finite gradient"):
        check_finite(torch.tensor(0.5), [p], "step 7")
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        check_finite(torch.tensor(math.nan), [], "step 7")


def _nan_on_call(fn, k: int):
    calls = [0]

    def wrapped(*a, **kw):
        out = fn(*a, **kw)
        calls[0] += 1
        return out * math.nan if calls[0] == k else out

    return wrapped


def test_nan_loss_in_stage1_names_step_and_batch_and_is_not_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(grade_trainer, "multi_objective_lambda_loss",
                        _nan_on_call(grade_trainer.multi_objective_lambda_loss, 3))
    with pytest.raises(NonFiniteError, match=r"GRADE stage 1 step 2 \(epoch 0, batch 2\): non-finite loss"):
        grade_trainer.fit_grade(two_type_log(300), GRADEConfig.model_validate(GRADE), checkpoint_dir=tmp_path,
                                checkpoint_every=1)
    state = _saved(tmp_path)
    assert state["stage"] == 1 and state["step"] == 2  # the last good step; step 2 never saved
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_gradient_in_stage2_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make = grade_trainer.make_policy

    def poisoned(*a, **kw):
        policy = make(*a, **kw)
        calls = [0]

        def hook(g):
            calls[0] += 1
            return g * math.nan if calls[0] == 4 else g  # stage 1 has 5 steps; then stage 2

        policy.mean_head.weight.register_hook(hook)
        return policy

    monkeypatch.setattr(grade_trainer, "make_policy", poisoned)
    cfg = GRADEConfig.model_validate({**GRADE, "stage1": {"epochs": 0}})
    with pytest.raises(NonFiniteError, match=r"GRADE stage 2 step 1 \(iteration 1, requests .*non-finite gradient"):
        grade_trainer.fit_grade(two_type_log(300), cfg, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert _saved(tmp_path)["step"] == 1


def test_nan_loss_in_mtl_names_step_and_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world_log: Path):
    from blendrank.mtl import fit as mtl_fit
    from blendrank.mtl.config import MTLConfig

    real, calls = mtl_fit.task_losses, [0]

    def poisoned(*a, **kw):
        sums, counts = real(*a, **kw)
        calls[0] += 1
        return (sums * math.nan if calls[0] == 5 else sums), counts

    monkeypatch.setattr(mtl_fit, "task_losses", poisoned)
    cfg = MTLConfig(epochs=1, batch_size=256, expert_dims=[8], tower_dims=[4])
    with pytest.raises(NonFiniteError, match=r"MTL step 4 \(epoch 1, batch 4\): non-finite loss"):
        mtl_fit.fit_mtl(world_log / "logs", None, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    state = _saved(tmp_path)
    assert state["step"] == 4 and state["batch"] == 4  # the last good step; step 4 never saved
    assert not (tmp_path / "model.pt").exists()


def test_cli_resume_flags(tmp_path: Path, world_log: Path):
    """A stale checkpoint of another config in --out is a clear error; --no-resume starts over."""
    from typer.testing import CliRunner

    from blendrank.cli.main import app

    Checkpointer(tmp_path, "mtl", "another-config").save(_state(1.0))
    args = ["mtl", "train", "--data", str(world_log / "logs"), "--out", str(tmp_path), "--quiet",
            "--set", "epochs=1", "--set", "expert_dims=[8]", "--set", "tower_dims=[4]", "--checkpoint-every", "5"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "checkpoint of another run" in res.output and "--no-resume" in res.output
    res = CliRunner().invoke(app, [*args, "--no-resume"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / CHECKPOINT_FILE).exists()


def test_grade_resume_restores_guardrail_multipliers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """In-process crash after the 4th checkpoint (Stage 2, step 2), then resume: the guard-rail
    Lagrange multipliers continue from their saved values and the result is the uninterrupted one."""
    cfg = GRADEConfig.model_validate({**GRADE, "stage2": {**GRADE["stage2"], "steps": 6},
                                      "reward": {**GRADE["reward"], "a_rule": 1.0, "guardrails": {"click": 0.0}}})
    table, anchor = two_type_log(300), [0.5, 0.5]
    clean = grade_trainer.fit_grade(table, cfg, anchor=anchor)
    lambdas = [r["guard/click/lambda"] for r in clean.history if "step" in r]
    assert lambdas[-1] > lambdas[0] > 0  # the guard rail binds: its multiplier grows

    save, count = Checkpointer.save, [0]

    def crashing(self, state):
        save(self, state)
        count[0] += 1
        if count[0] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", crashing)
    with pytest.raises(KeyboardInterrupt):
        grade_trainer.fit_grade(table, cfg, anchor=anchor, checkpoint_dir=tmp_path, checkpoint_every=2)
    monkeypatch.undo()
    state = _saved(tmp_path)
    assert state["stage"] == 2 and state["step"] == 2 and float(state["multipliers"][0]) == pytest.approx(lambdas[1])
    resumed = grade_trainer.fit_grade(table, cfg, anchor=anchor, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert [r["guard/click/lambda"] for r in resumed.history if "step" in r] == lambdas
    for k, v in clean.policy.state_dict().items():
        assert torch.equal(resumed.policy.state_dict()[k], v), k


def test_ctrl_c_during_a_checkpoint_write_lands_after_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """SIGINT mid-write is held until the new checkpoint is in place (torch's zip writer would
    otherwise turn it into a RuntimeError that hides the KeyboardInterrupt), then raised."""
    import os
    import signal

    save = torch.save

    def interrupted(obj, f, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the file is being written
        save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Checkpointer(tmp_path, "t", "h", every=1).save(_state(2.0, step=7))
    monkeypatch.undo()
    assert _saved(tmp_path)["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
