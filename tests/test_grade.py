"""GRADE: policy, trainer, persistence, and learning a known personalisation."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from blendrank.algos.grade.config import VARIANTS, GRADEConfig
from blendrank.algos.grade.data import fit_fusion_spec
from blendrank.algos.grade.trainer import GradePolicy, fit_grade, make_policy
from blendrank.config import apply_overrides
from blendrank.data.synthetic import two_type_log
from blendrank.fusion.policy import DirichletPolicy


def cfg(*overrides: str) -> GRADEConfig:
    base = {"stage1": {"epochs": 1}, "stage2": {"steps": 30, "batch_size": 256},
            "reward": {"a_prior": 0.0, "k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}}
    return GRADEConfig.model_validate(apply_overrides(base, list(overrides)))


def test_policy_outputs_live_on_the_simplex_and_gradients_stay_finite():
    torch.manual_seed(0)
    pol = DirichletPolicy([3, 5], n_numeric=2, n_stats=4, k=3, kappa_min=0.05, kappa_init=0.2)
    cat, num, stats = torch.randint(3, (64, 2)), torch.randn(64, 2), torch.randn(64, 4)
    z, kappa = pol.heads(cat, num, stats)
    w = pol.sample(z, kappa, 16)
    assert w.shape == (64, 16, 3) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(64, 16))
    torch.testing.assert_close(pol.mean_weights(cat, num, stats).sum(-1), torch.ones(64))
    logp = pol.log_prob(z, kappa, w)
    (logp.mean() + pol.entropy(z, kappa).mean()).backward()
    assert torch.isfinite(logp).all()
    assert all(torch.isfinite(p.grad).all() for p in pol.parameters() if p.grad is not None)


@pytest.mark.parametrize("exploration", ["gaussian_logits", "gaussian_weights"])
def test_gaussian_ablations_sample_valid_weights(exploration):
    pol = DirichletPolicy([2], 1, 4, 3, exploration=exploration)
    z, kappa = pol.heads(torch.zeros(8, 1, dtype=torch.long), torch.zeros(8, 1), torch.zeros(8, 4))
    w = pol.to_weights(pol.sample(z, kappa, 5))
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(8, 5))


def test_parameters_change_after_a_stage2_step():
    table = two_type_log(300)
    before = fit_grade(table, cfg("stage1.epochs=0", "stage2.steps=0"))
    after = fit_grade(table, cfg("stage1.epochs=0", "stage2.steps=1"))
    changed = [not torch.equal(a, b) for a, b in zip(before.policy.parameters(), after.policy.parameters())]
    assert any(changed)


def test_grade_learns_two_user_types_different_weights():
    table = two_type_log()
    pol = fit_grade(table, cfg("stage2.steps=60"))
    batch = pol.batch(table)
    w = pol.weights(batch)
    utype = torch.from_numpy(table["f_user_type"].to_numpy()[::8].copy())
    w0, w1 = w[utype == 0].mean(0), w[utype == 1].mean(0)
    assert w0[0] > 0.6, w0  # click-driven users: weight on pred_click
    assert w1[1] > 0.6, w1  # order-driven users: weight on pred_order


def test_save_load_round_trip_gives_identical_weights(tmp_path):
    table = two_type_log(200)
    pol = fit_grade(table, cfg("stage2.steps=2"))
    pol.save(tmp_path / "p")
    again = GradePolicy.load(tmp_path / "p")
    torch.testing.assert_close(pol.weights(pol.batch(table)), again.weights(again.batch(table)))


def test_every_variant_is_a_valid_config_and_every_field_is_documented():
    for name, overrides in VARIANTS.items():
        GRADEConfig.model_validate(apply_overrides({}, overrides))

    def walk(model):
        for fname, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{fname}"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(GRADEConfig)


def test_make_policy_matches_config():
    p = make_policy(GRADEConfig().policy, [4], 2, 8, 3)
    assert p.k == 3 and p.exploration == "dirichlet"


def test_train_cli_trains_and_saves_grade_and_static_search(tmp_path):
    from typer.testing import CliRunner

    from blendrank.cli.main import app

    log = tmp_path / "log.parquet"
    pq.write_table(two_type_log(400), log)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--method", "grade", "--data", str(log), "--out", str(tmp_path / "g"),
                            "--set", "stage2.steps=3", "--set", "stage1.epochs=1"])
    assert r.exit_code == 0, r.output
    assert GradePolicy.load(tmp_path / "g").policy.k == 2
    r = runner.invoke(app, ["train", "--method", "static_search", "--data", str(log), "--out", str(tmp_path / "s"),
                            "--set", "budget=20"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "static_weights.json").exists()
    r = runner.invoke(app, ["train", "--method", "grade", "--data", str(log), "--out", str(tmp_path / "x"),
                            "--set", "stage2.stepz=3"])
    assert r.exit_code == 1 and "stepz" in r.output


def _predicted_clicks(pol, table, weights=None):
    from blendrank.fusion.formulas import fuse, top_k

    batch = pol.batch(table)
    w = pol.weights(batch) if weights is None else torch.tensor(weights).expand(len(batch), -1)
    page, _ = top_k(fuse(batch.features, w.unsqueeze(1)), batch.mask, 2)
    return batch.inputs[..., 0].gather(1, page[:, 0]).sum().item()


def test_guardrail_keeps_predicted_clicks_while_prior_pulls_to_orders():
    """R_prior values orders only; production ranks by pred_click. Unconstrained, GRADE gives up
    clicks; with a click guard rail (Lagrange multiplier) it keeps them within tolerance."""
    table = two_type_log(400)
    common = ["stage1.epochs=0", "stage2.steps=80", "stage2.ema_decay=0", "reward.a_post=0", "reward.a_prior=1", "reward.k=2",
              "reward.prior_coefs={order: 1.0}", "reward.prior_model=predictions"]
    anchor = [0.9, 0.1]
    free = fit_grade(table, cfg(*common), anchor=anchor)
    guarded = fit_grade(table, cfg(*common, "reward.guardrails={click: 0.02}"), anchor=anchor)
    base = _predicted_clicks(free, table, anchor)
    assert _predicted_clicks(free, table) < 0.9 * base  # the prior alone trades clicks away
    assert _predicted_clicks(guarded, table) > 0.95 * base
    assert any(r.get("guard/click/lambda", 0) > 0 for r in guarded.history)


def test_shown_prefix_ranks_the_shown_candidates_as_the_whole_list_does():
    from blendrank.algos.grade.data import build_batch, fit_policy_features
    from blendrank.algos.grade.trainer import _shown_prefix
    from blendrank.fusion.formulas import top_k
    from blendrank.rewards.components import posterior_reward

    table = two_type_log(n=64, seed=3)
    rng = torch.Generator().manual_seed(0)
    pos = table["position"].to_numpy()
    hidden = (torch.rand(table.num_rows, generator=rng).numpy() < 0.4) | (pos == pos.max())  # unshown tail per request
    table = table.set_column(table.column_names.index("position"), "position",
                             pa.array(pos, mask=hidden))
    b = build_batch(table, fit_fusion_spec(table), fit_policy_features(table))
    assert int(b.shown.sum(1).max()) < b.mask.shape[1]  # there is an unshown tail to skip
    scores = torch.randn(len(b), 5, b.mask.shape[1])
    sub_scores, sub_shown = _shown_prefix(scores, b.shown, 4)
    assert sub_scores.shape[-1] < scores.shape[-1]
    full, _ = top_k(scores, b.shown, 4)
    short, _ = top_k(sub_scores, sub_shown, 4)
    weights = {o: 1.0 for o in b.labels}
    torch.testing.assert_close(posterior_reward(short, b.labels, b.shown, weights, k=4),
                               posterior_reward(full, b.labels, b.shown, weights, k=4))
    shuffled = b.shown.flip(1)  # shown candidates not first: falls back to the whole list
    assert _shown_prefix(scores, shuffled, 4)[0] is scores


def test_train_cli_streams_the_train_split_and_checks_it(tmp_path):
    """On a train/valid/test directory `train --method grade` reads train.parquet in record
    batches (the same policy as fit_grade on that file) and still rejects contract violations."""
    from typer.testing import CliRunner

    from blendrank.cli.main import app

    table = two_type_log(300)
    for name in ("train", "valid", "test"):
        pq.write_table(table, tmp_path / f"{name}.parquet")
    args = ["--set", "stage2.steps=2", "--set", "stage1.epochs=1", "--set", "data.read_batch_rows=500"]
    r = CliRunner().invoke(app, ["train", "--method", "grade", "--data", str(tmp_path), "--out", str(tmp_path / "g"), *args])
    assert r.exit_code == 0, r.output
    assert "trained on 2,400 rows" in " ".join(r.output.split())
    streamed = GradePolicy.load(tmp_path / "g")
    batch = streamed.batch(table)
    direct = fit_grade(tmp_path / "train.parquet", streamed.config, anchor=[0.5, 0.5], spec=streamed.spec)
    torch.testing.assert_close(streamed.weights(batch), direct.weights(batch))

    bad = table.set_column(table.column_names.index("pred_click"), "pred_click",
                           pa.array(-table["pred_click"].to_numpy()))
    pq.write_table(bad, tmp_path / "train.parquet")
    r = CliRunner().invoke(app, ["train", "--method", "grade", "--data", str(tmp_path), "--out", str(tmp_path / "h"), *args])
    assert r.exit_code == 1 and "train.parquet" in r.output and "pred_click" in r.output, r.output
    assert "Traceback" not in r.output
