"""Scale-out (SPEC §8): GRADE Stage 2 under torchrun matches a 1-process run with the same
global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blendrank import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ddp_grade.py"
ARGS = ["--requests", "300", "--steps", "4", "--batch", "96", "--generations", "8", "--iterations", "2"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_from_env() == (0, 1)
    assert dist.is_main() and dist.world_size() == 1 and not dist.is_distributed()
    t = torch.tensor([1.0, 3.0])
    assert dist.all_reduce_mean(t) is t and t.tolist() == [1.0, 3.0]
    assert dist.all_gather_cat(t) is t
    dist.barrier()


@pytest.mark.distributed
def test_two_process_stage2_matches_one_process(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r1 = subprocess.run([sys.executable, str(SCRIPT), "--out", str(one), *ARGS], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         str(SCRIPT), "--out", str(two), *ARGS], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert len(a["losses"]) == len(b["losses"]) == 4
    assert any(abs(x) > 1e-6 for x in a["losses"])  # a real trajectory, not all zeros
    np.testing.assert_allclose(b["losses"], a["losses"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(b["rewards"], a["rewards"], atol=1e-4, rtol=0)
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        np.testing.assert_allclose(np.asarray(b["params"][k]), np.asarray(a["params"][k]), atol=1e-4, rtol=0, err_msg=k)
