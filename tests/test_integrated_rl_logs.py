"""IntegratedRL-MTF on logs without a world: sessions from user sequences, the session context,
replayed rewards, transitions in the trusted interval, one offline round, `train` and `bench --data`."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from blendrank.algos.grade.data import build_batch, fit_fusion_spec, fit_policy_features
from blendrank.algos.integrated_rl import IntegratedRLConfig
from blendrank.algos.integrated_rl.logs import (
    LogPolicy,
    LogSetup,
    fit_integrated_rl_logs,
    log_sessions,
    log_transitions,
    production_log_action,
    replay_reward,
    session_context,
)
from blendrank.cli.main import app
from blendrank.data.synthetic import two_type_log
from blendrank.errors import DataError
from blendrank.fusion.formulas import fuse, fusion_features
from blendrank.metrics import ndcg_at_k

OBJECTIVES = ["click", "order"]
FAST = IntegratedRLConfig(steps_per_round=60, batch_size=64, hidden=[16, 16], log_actions_per_request=2)


def _log(n: int = 400, users: int = 120, seed: int = 0) -> pa.Table:
    """The two-type synthetic log with ``users`` users, so that users come back (sessions > 1);
    even user ids are type 0, odd ones type 1, as the requests' types say."""
    t = two_type_log(n=n, L=6, seed=seed)
    utype = t["f_user_type"].to_numpy()
    uid = 2 * (np.repeat(np.arange(n), 6) % (users // 2)) + utype
    return t.set_column(t.column_names.index("user_id"), "user_id", pa.array(uid))


def _setup(cfg: IntegratedRLConfig = FAST) -> LogSetup:
    return LogSetup(OBJECTIVES, [0.5, 0.5], production_log_action(np.array([0.5, 0.5]), 1e-3, cfg).tolist())


def test_sessions_follow_each_user_in_time_and_split_on_gaps():
    # Requests 0..5: user a at t = 0, 10, 5000 s; user b at t = 1, 2; user c once.
    rows = [(0, "a", 0), (1, "b", 1000), (2, "a", 10_000), (3, "a", 5_000_000), (4, "b", 2000), (5, "c", 3000)]
    t = pa.table({"request_id": [r[0] for r in rows], "user_id": [r[1] for r in rows], "ts": [r[2] for r in rows]})
    rid = np.array([5, 4, 3, 2, 1, 0])  # a batch in some other order
    s = log_sessions(t, rid, None)
    by_id = lambda a: {int(r): int(v) for r, v in zip(rid, a)}
    assert s.n_sessions == 3
    assert by_id(s.step) == {0: 0, 2: 1, 3: 2, 1: 0, 4: 1, 5: 0}
    nxt = {int(r): (int(rid[n]) if n >= 0 else None) for r, n in zip(rid, s.next)}
    assert nxt == {0: 2, 2: 3, 3: None, 1: 4, 4: None, 5: None}
    g = log_sessions(t, rid, gap_s=60.0)  # a's third request comes ~83 min later: a new session
    assert g.n_sessions == 4 and by_id(g.step)[3] == 0
    assert {int(r): (int(rid[n]) if n >= 0 else None) for r, n in zip(rid, g.next)}[2] is None


def test_session_context_uses_only_earlier_logged_feedback():
    rid = np.array([10, 11, 12, 20])
    t = pa.table({"request_id": [10, 11, 12, 20], "user_id": [1, 1, 1, 2], "ts": [0, 1, 2, 0]})
    s = log_sessions(t, rid, None)
    counts = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 5.0]])
    ctx = session_context(counts, np.array([0.5, 0.5]), s)
    expected = np.array([
        [0, 0, 0, 0],
        [math.log1p(1), math.log1p(1.5), math.log1p(2), math.log1p(1)],
        [math.log1p(2), math.log1p(3.0), math.log1p(0), math.log1p(3)],
        [0, 0, 0, 0],  # another user's first request: nothing before it
    ])
    np.testing.assert_allclose(ctx, expected, atol=1e-12)


def test_replayed_reward_of_the_production_action_is_the_production_ndcg():
    t = _log()
    spec = fit_fusion_spec(t, OBJECTIVES)
    batch = build_batch(t, spec, fit_policy_features(t))
    setup = _setup()
    a = torch.tensor(setup.production_action).expand(len(batch), -1)
    r = replay_reward(batch, a, setup, groups=2)
    scores = fuse(fusion_features(batch.inputs, "log_linear", 1e-3), torch.tensor([0.5, 0.5]))
    nd = {o: ndcg_at_k(scores, batch.labels[o], batch.mask, 10, empty="zero").per_request.numpy() for o in OBJECTIVES}
    np.testing.assert_allclose(r[:, 0], 0.5 * nd["click"], atol=1e-6)
    np.testing.assert_allclose(r[:, 1], 0.5 * nd["order"], atol=1e-6)
    # Ranking by pred_click alone is best for type-0 users' clicks.
    click_only = torch.tensor([1.0, 0.0, -3.0, -3.0]).expand(len(batch), -1)
    r_click = replay_reward(batch, click_only, setup, groups=1)[:, 0]
    assert r_click.shape == (len(batch),) and (r_click.mean() != r.sum(1).mean())


def test_transitions_stay_in_the_trusted_interval_and_chain_sessions():
    t = _log()
    center = fit_policy_features(t)
    batch = build_batch(t, fit_fusion_spec(t, OBJECTIVES), center)
    from blendrank.algos.integrated_rl.logs import _states

    state, sess = _states(t, batch, center, _setup(), FAST)
    data = log_transitions(batch, state, sess, _setup(), FAST, np.random.default_rng(0))
    assert len(data) == 2 * len(batch)
    centre = np.array(_setup().production_action)
    assert np.all(data.action >= data.lo - 1e-6) and np.all(data.action <= data.hi + 1e-6)
    assert np.all(data.lo >= centre - 0.15 - 1e-6) and np.all(data.hi <= centre + 0.15 + 1e-6)
    assert len(np.unique(data.action[:, 0])) > len(batch)  # actions vary: the critic sees their effect
    cont = np.flatnonzero(sess.next >= 0)
    assert 0 < len(cont) < len(batch)
    np.testing.assert_array_equal(data.next_state[cont], state[sess.next[cont]])
    np.testing.assert_array_equal(data.done[: len(batch)], (sess.next < 0).astype(np.float32))
    assert np.all(np.isfinite(data.reward)) and np.all(data.reward >= 0)


def test_one_offline_round_saves_and_reloads(tmp_path):
    t = _log()
    pol = fit_integrated_rl_logs(t, _log(200, 60, seed=1), _setup(), FAST)
    (h,) = pol.history
    for k in ("critic_loss", "q_mean", "actor_loss", "ab_value", "ab_production_value"):
        assert math.isfinite(h[k]), k
    assert h["sessions"] == len(np.unique(t["user_id"].to_numpy())) < h["requests"] and len(h["trace"]["critic_loss"]) == len(h["trace"]["step"]) > 10
    test = _log(100, 50, seed=2)
    rid, scores, action = pol.scores(test)
    assert scores.shape == (100, 6) and action.shape == (100, 4)
    lo = np.array(_setup().production_action) - 0.15
    assert torch.all(action >= torch.from_numpy(lo) - 0.2)  # near its trusted interval
    pol.save(tmp_path / "p")
    again = LogPolicy.load(tmp_path / "p")
    rid2, scores2, _ = again.scores(test)
    np.testing.assert_array_equal(rid, rid2)
    assert torch.allclose(scores, scores2)


def test_train_cli_and_log_bench_arm(tmp_path):
    data = tmp_path / "log"
    data.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        pq.write_table(_log(300, 100, seed), data / f"{split}.parquet")
    runner = CliRunner()
    sets = ["--set", "steps_per_round=40", "--set", "batch_size=64", "--set", "hidden=[16,16]"]
    r = runner.invoke(app, ["train", "--method", "integrated_rl", "--data", str(data), "--out", str(tmp_path / "p"), *sets])
    assert r.exit_code == 0, r.output
    assert "valid composite NDCG" in r.output
    assert {"policy.pt", "config.json", "history.jsonl", "setup.json"} <= {p.name for p in (tmp_path / "p").iterdir()}
    assert not (tmp_path / "p" / "checkpoint.pt").exists()
    LogPolicy.load(tmp_path / "p")

    r = runner.invoke(app, ["bench", "--data", str(data), "--methods", "production,integrated_rl", "--out", str(tmp_path / "b"),
                            "--set", "n_boot=100", *[x if x == "--set" else f"integrated_rl.{x}" for x in sets]])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert "integrated_rl" in b["lifts"] and math.isfinite(b["offline"]["integrated_rl"]["composite_ndcg@10"]["mean"])
    assert b["learning_curves"]["integrated_rl"][0]["round"] == 0
    assert "IntegratedRL-MTF" in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "integrated_rl", "--set", "log_actions_per_request=0"], "log_actions_per_request"),
    (["bench", "--methods", "production,integrated_rl", "--set", "fusion=additive"], "fusion=log_linear"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    data = tmp_path / "log.parquet"
    pq.write_table(_log(300, 100), data)
    r = CliRunner().invoke(app, [*args, "--data", str(data), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output


def test_interrupted_round_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from blendrank.algos.integrated_rl import trainer

    t, cfg = _log(), FAST.model_copy(update={"steps_per_round": 30})
    clean = fit_integrated_rl_logs(t, None, _setup(cfg), cfg)
    step = trainer.Learner.step

    def crash_at_25(self, b, n_global=None):
        if self.n_steps == 25:
            raise KeyboardInterrupt
        return step(self, b, n_global)

    monkeypatch.setattr(trainer.Learner, "step", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        fit_integrated_rl_logs(t, None, _setup(cfg), cfg, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert (tmp_path / "checkpoint.pt").exists()  # written at step 20
    calls = []

    def counted(self, b, n_global=None):
        calls.append(self.n_steps)
        return step(self, b, n_global)

    monkeypatch.setattr(trainer.Learner, "step", counted)
    resumed = fit_integrated_rl_logs(t, None, _setup(cfg), cfg, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert calls == list(range(20, 30))  # it continued from step 20, it did not start over
    for a, b in zip(clean.actor.state_dict().values(), resumed.actor.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert clean.history[0]["trace"] == resumed.history[0]["trace"]


def test_scoring_a_table_without_labels_is_a_clear_error():
    t = _log(200, 60)
    pol = fit_integrated_rl_logs(t, None, _setup(), FAST.model_copy(update={"steps_per_round": 2}))
    with pytest.raises(DataError, match="label_click"):
        pol.scores(t.drop_columns(["label_click"]))


def test_one_request_sessions_are_said_in_the_log_and_bench_json(tmp_path):
    single = two_type_log(n=300, L=6, seed=0)  # user_id = request_id: every session is one request
    said: list[str] = []
    pol = fit_integrated_rl_logs(single, None, _setup(), FAST, log=said.append)
    note = pol.history[0]["note"]
    assert "every session is one request" in note and "gamma = 0.9 has no effect" in note
    assert any(s.startswith("integrated_rl: every session is one request") for s in said)
    with_users = fit_integrated_rl_logs(_log(300, 100), None, _setup(), FAST, log=said.append)
    assert "note" not in with_users.history[0]

    data = tmp_path / "log"
    data.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        pq.write_table(two_type_log(n=200, L=6, seed=seed), data / f"{split}.parquet")
    sets = ["steps_per_round=40", "batch_size=64", "hidden=[16,16]"]
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(data),
            "--methods",
            "production,integrated_rl",
            "--out",
            str(tmp_path / "b"),
            "--set",
            "n_boot=100",
            "--set",
            "ope=false",
            *[x for s in sets for x in ("--set", f"integrated_rl.{s}")],
        ],
    )
    assert r.exit_code == 0, r.output
    assert "gamma = 0.9 has no effect" in " ".join(r.output.split())
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert any(n.startswith("integrated_rl: every session is one request") for n in b["notes"])
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## IntegratedRL-MTF on the log" in md and "has no effect" in md
