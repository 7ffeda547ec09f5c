"""Kill -9 and resume (docs/scaling.md): every trainer, killed right after a checkpoint and
restarted with the same command, reaches the result of an uninterrupted run with the same seed."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
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
