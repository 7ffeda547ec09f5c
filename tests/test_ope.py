"""Off-policy estimators on a tiny bandit with known truth, hand-computed cases and bad input."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from blendrank.errors import DataError
from blendrank.ope import (
    ArmTarget,
    ImportanceWeights,
    Kernel,
    LoggedRequests,
    PageObjective,
    direct_method,
    dirichlet_log_density,
    estimate_arms,
    item_position_dr,
    item_position_ips,
    logged_page_quantities,
    logged_requests_from_table,
    pages_from_weights,
    paired_lifts,
    positions_from_pages,
    spearman,
    validate,
    weight_space_ips,
    weight_space_weights,
)
from blendrank.ope.estimators import PerRequestEstimate

EXAM = np.array([1.0, 0.6, 0.35, 0.2, 0.1])
ALPHA0 = np.array([2.0, 2.0, 2.0])  # wide logging exploration (click, order, price inputs)


class Bandit:
    """Fixed requests (true relevances, prices) under a position-based click model."""

    def __init__(self, n: int, n_slots: int, page: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.click = rng.uniform(0.05, 0.9, (n, n_slots))
        self.cvr = rng.uniform(0.05, 0.6, (n, n_slots))
        self.price = rng.lognormal(0.0, 0.6, (n, n_slots))
        self.inputs = np.stack([self.click, self.click * self.cvr, self.price], axis=-1)
        self.page = page
        self.objective = PageObjective({"click": 0.4, "order*price": 1.0}, np.ones(page))

    def item_value(self) -> np.ndarray:
        """``[B, L]`` true value at examination 1."""
        return 0.4 * self.click + self.click * self.cvr * self.price

    def true_value(self, pages: np.ndarray) -> np.ndarray:
        """``[B]`` exact expected page value."""
        v = np.take_along_axis(self.item_value(), pages, 1)
        return (v * EXAM[: pages.shape[1]]).sum(1)

    def true_dirichlet_value(self, alpha: np.ndarray, draws: int = 400, seed: int = 99) -> float:
        rng = np.random.default_rng(seed)
        total = 0.0
        for _ in range(draws):
            w = rng.dirichlet(alpha, size=len(self.click))
            total += self.true_value(pages_from_weights(self.inputs, w, self.page)).mean()
        return total / draws

    def log(self, seed: int, alpha0: np.ndarray = ALPHA0, pred_bias: float = 1.0) -> LoggedRequests:
        rng = np.random.default_rng(1000 + seed)
        n, n_slots = self.click.shape
        w = np.clip(rng.dirichlet(alpha0, size=n), 1e-12, None)
        w /= w.sum(1, keepdims=True)
        prop = np.exp(dirichlet_log_density(w, alpha0))
        pages = pages_from_weights(self.inputs, w, self.page)
        pos = positions_from_pages(pages, n_slots)
        exam = np.where(pos > 0, np.concatenate([[0.0], EXAM])[pos], 0.0)
        click = rng.random((n, n_slots)) < exam * self.click
        order = click & (rng.random((n, n_slots)) < self.cvr)
        preds = {"click": np.clip(self.click * pred_bias, 0, 1),
                 "order": np.clip(self.click * self.cvr * pred_bias, 0, 1)}
        return LoggedRequests(position=pos, labels={"click": click, "order": order}, preds=preds,
                              price=self.price, inputs=self.inputs, weights=w, propensity=prop)


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    a = np.array(values)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a)))


def test_weight_ips_of_the_logging_policy_is_the_logged_average() -> None:
    bandit = Bandit(300, 4, 2)
    logged = bandit.log(0)
    rho = weight_space_weights(logged, alpha=ALPHA0)
    assert np.all(rho.raw == 1.0)
    logged_mean = logged_page_quantities(logged, bandit.objective)["value"].mean()
    for snips in (False, True):
        est = weight_space_ips(logged, rho, bandit.objective, self_normalised=snips)
        assert est.mean("value") == logged_mean


def test_weight_space_ips_and_snips_are_unbiased_for_a_dirichlet_target() -> None:
    bandit = Bandit(400, 4, 2)
    target = np.array([2.0, 2.0, 8.0])  # >= ALPHA0: bounded importance weights
    truth = bandit.true_dirichlet_value(target)
    ips, snips, naive = [], [], []
    for seed in range(40):
        logged = bandit.log(seed)
        rho = weight_space_weights(logged, alpha=target)
        ips.append(weight_space_ips(logged, rho, bandit.objective).mean("value"))
        snips.append(weight_space_ips(logged, rho, bandit.objective, self_normalised=True).mean("value"))
        naive.append(logged_page_quantities(logged, bandit.objective)["value"].mean())
    for name, values in (("ips", ips), ("snips", snips)):
        mean, se = _mean_and_se(values)
        assert abs(mean - truth) < 4 * se + 2e-3, (name, mean, truth, se)
    mean, se = _mean_and_se(naive)
    assert abs(mean - truth) > 4 * se + 2e-3  # the test can tell a biased estimate


def test_item_position_estimators_are_unbiased_when_the_log_shows_every_candidate() -> None:
    bandit = Bandit(400, 3, 3)  # L = P: every candidate is shown, only positions move
    pages = pages_from_weights(bandit.inputs, np.array([0.2, 0.5, 0.3]), 3)
    truth = bandit.true_value(pages).mean()
    runs: dict[str, list[float]] = {"ips": [], "snips": [], "dr": [], "dm": []}
    for seed in range(40):
        logged = bandit.log(seed, pred_bias=0.7)  # biased predictions: DM is off, DR is not
        obj = bandit.objective
        runs["ips"].append(item_position_ips(logged, pages, obj, EXAM).mean("value"))
        snips = item_position_ips(logged, pages, obj, EXAM, self_normalised=True)
        runs["snips"].append(snips.mean("value"))
        runs["dr"].append(item_position_dr(logged, pages, obj, EXAM).mean("value"))
        runs["dm"].append(direct_method(logged, pages, obj, EXAM).mean("value"))
    for name in ("ips", "snips", "dr"):
        mean, se = _mean_and_se(runs[name])
        assert abs(mean - truth) < 4 * se + 2e-3, (name, mean, truth, se)
    np.testing.assert_allclose(runs["snips"], runs["ips"], rtol=1e-12)  # full coverage, no clip
    mean, se = _mean_and_se(runs["dm"])
    assert abs(mean - truth) > 0.1 * truth


def test_dm_and_dr_are_unbiased_with_exact_predictions_when_the_target_shows_unshown_items() -> None:
    bandit = Bandit(400, 6, 2)
    pages = pages_from_weights(bandit.inputs, np.array([0.1, 0.2, 0.7]), 2)  # price-heavy
    truth = bandit.true_value(pages).mean()
    dr, ips = [], []
    for seed in range(30):
        logged = bandit.log(seed)
        dm = direct_method(logged, pages, bandit.objective, EXAM).mean("value")
        assert dm == pytest.approx(truth, rel=1e-12)
        dr.append(item_position_dr(logged, pages, bandit.objective, EXAM).mean("value"))
        ips.append(item_position_ips(logged, pages, bandit.objective, EXAM).mean("value"))
    mean, se = _mean_and_se(dr)
    assert abs(mean - truth) < 4 * se + 2e-3
    mean, se = _mean_and_se(ips)
    assert mean < truth - 4 * se  # IPS counts items the log never showed as 0


def _one_item_log(value: np.ndarray, weights: np.ndarray, prop: np.ndarray) -> LoggedRequests:
    n = len(value)
    ones = np.ones((n, 1))
    return LoggedRequests(position=ones.astype(int), labels={"click": ones}, preds={"click": ones},
                          price=value[:, None], weights=weights, propensity=prop)


def test_weight_space_clipping_and_self_normalisation_hand_case() -> None:
    obj = PageObjective({"click*price": 1.0}, np.ones(1))
    logged = _one_item_log(np.array([1.0, 2.0, 3.0]), np.full((3, 2), 0.5), np.ones(3))
    rho = ImportanceWeights.from_raw(np.array([0.5, 2.0, 4.0]), clip=3.0)
    np.testing.assert_array_equal(rho.clipped, [0.5, 2.0, 3.0])
    assert rho.diagnostics()["clipped_share"] == pytest.approx(1 / 3)
    ips = weight_space_ips(logged, rho, obj)
    assert ips.mean("value") == pytest.approx((0.5 * 1 + 2 * 2 + 3 * 3) / 3)  # 4.5
    snips = weight_space_ips(logged, rho, obj, self_normalised=True)
    assert snips.mean("value") == pytest.approx(13.5 / 5.5)
    # self-normalisation undoes a constant scale of the weights; IPS does not
    scaled = ImportanceWeights.from_raw(2 * rho.clipped)
    assert weight_space_ips(logged, scaled, obj, self_normalised=True).mean("value") == \
        pytest.approx(13.5 / 5.5)


def test_item_position_clipping_and_self_normalisation_hand_case() -> None:
    # item 0 logged at position 2, item 1 at position 1; the target swaps them
    logged = LoggedRequests(position=np.array([[2, 1]]), labels={"click": np.ones((1, 2))},
                            preds={"click": np.full((1, 2), 0.5)})
    obj = PageObjective({"click": 1.0}, np.ones(2))
    exam = np.array([1.0, 0.25])
    pages = np.array([[0, 1]])
    assert item_position_ips(logged, pages, obj, exam).mean("value") == pytest.approx(4.25)
    clipped = item_position_ips(logged, pages, obj, exam, clip=2.0)
    assert clipped.mean("value") == pytest.approx(2.25)
    snips = item_position_ips(logged, pages, obj, exam, clip=2.0, self_normalised=True)
    assert snips.mean("value") == pytest.approx(2.25 / 0.75)  # coverage adjusted (0.5 + 1) / 2
    assert snips.mean("impressions") == pytest.approx(2.0)
    # DR: DM 1*0.5 + 0.25*0.5, plus clipped residuals 2*(1 - 0.25*0.5) + 0.25*(1 - 1*0.5)
    dr = item_position_dr(logged, pages, obj, exam, clip=2.0)
    assert dr.mean("value") == pytest.approx(0.625 + 1.75 + 0.125)


def test_kernels_integrate_to_one_and_match_a_dirichlet_target() -> None:
    rng = np.random.default_rng(0)
    alpha0 = np.array([3.0, 3.0, 3.0])
    w = rng.dirichlet(alpha0, size=200_000)
    logged = LoggedRequests(position=np.zeros((len(w), 1)), labels={}, preds={}, weights=w,
                            propensity=np.exp(dirichlet_log_density(w, alpha0)))
    centre = np.array([0.4, 0.35, 0.25])
    for kernel in (Kernel("gaussian", bandwidth=0.08), Kernel("dirichlet", kappa=30.0)):
        rho = weight_space_weights(logged, weights=centre, kernel=kernel)
        assert rho.raw.mean() == pytest.approx(1.0, abs=0.03), kernel
    by_kernel = weight_space_weights(logged, weights=centre, kernel=Kernel("dirichlet", kappa=30.0))
    by_alpha = weight_space_weights(logged, alpha=30.0 * centre)
    np.testing.assert_allclose(by_kernel.raw, by_alpha.raw, rtol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_bad_propensity_is_a_clear_error(bad: float) -> None:
    prop = np.array([0.5, bad, 1.0])
    with pytest.raises(DataError, match="`propensity`"):
        _one_item_log(np.ones(3), np.full((3, 2), 0.5), prop)


def test_missing_propensity_is_a_clear_error() -> None:
    logged = _one_item_log(np.ones(3), np.full((3, 2), 0.5), None)
    with pytest.raises(DataError, match="`propensity` is missing"):
        weight_space_weights(logged, alpha=np.ones(2))
    table = pa.table({"request_id": [1, 1, 2], "position": pa.array([1, None, 1], pa.int32()),
                      "label_click": [1, 0, 0], "pred_click": [0.3, 0.2, 0.1]})
    with pytest.raises(DataError, match="`propensity`"):
        logged_requests_from_table(table, ["click"], fusion_inputs=["click"])
    assert logged_requests_from_table(table, ["click"], require_propensity=False).n_requests == 2


def test_table_reader_pads_requests_in_candidate_order() -> None:
    table = pa.table({
        "request_id": [7, 7, 7, 3, 3], "position": pa.array([2, 1, None, None, 1], pa.int32()),
        "label_click": [1, 0, 0, 0, 1], "pred_click": [0.3, 0.2, 0.1, 0.4, 0.5],
        "price": [1.0, 2.0, 3.0, 4.0, 5.0], "propensity": [2.0, 2.0, 2.0, 0.5, 0.5],
        "logging_w_click": [0.6] * 3 + [0.7] * 2, "logging_w_price": [0.4] * 3 + [0.3] * 2})
    logged = logged_requests_from_table(table, ["click"], fusion_inputs=["click", "price"],
                                        price_scale=2.0)
    np.testing.assert_array_equal(logged.position, [[2, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(logged.mask, [[True, True, True], [True, True, False]])
    np.testing.assert_allclose(logged.propensity, [2.0, 0.5])
    np.testing.assert_allclose(logged.weights, [[0.6, 0.4], [0.7, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(logged.inputs[1, :2, 1], [2.0, 2.5])


def test_paired_lifts_of_known_ratios() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    clicks = rng.poisson(1.0, n).astype(float)
    base = PerRequestEstimate({"click": clicks, "impressions": np.full(n, 5.0), "value": clicks},
                              np.ones(n))
    arm = PerRequestEstimate({"click": 1.1 * clicks, "impressions": np.full(n, 5.0),
                              "value": clicks + rng.normal(0, 0.01, n)}, np.ones(n))
    lifts = paired_lifts({"production": base, "a": arm, "same": base}, "production", seed=3)
    assert set(lifts) == {"a", "same"}
    assert lifts["a"]["ctr"].rel == pytest.approx(0.1)
    assert lifts["a"]["ctr"].lo == pytest.approx(0.1) and lifts["a"]["ctr"].hi == pytest.approx(0.1)
    assert lifts["same"]["value"].to_dict() == {"rel": 0.0, "ci95": [0.0, 0.0]}
    again = paired_lifts({"production": base, "a": arm}, "production", seed=3)
    assert again["a"]["value"] == lifts["a"]["value"]
    assert lifts["a"]["value"].lo < lifts["a"]["value"].rel < lifts["a"]["value"].hi


def test_validate_hand_case() -> None:
    def lift(rel: float, lo: float, hi: float) -> dict:
        return {"value": {"rel": rel, "ci95": [lo, hi]}}

    truth = {"a": lift(0.05, 0.03, 0.07), "b": lift(-0.02, -0.03, -0.01), "c": lift(0.0, -0.01, 0.01)}
    est = {"a": lift(0.04, 0.02, 0.06), "b": lift(0.01, 0.0, 0.02), "c": lift(0.005, -0.01, 0.02)}
    v = validate(est, truth)
    assert v.n_pairs == 3 and v.n_sign_pairs == 2
    assert v.coverage == pytest.approx(2 / 3)
    assert v.sign_agreement == pytest.approx(0.5)
    assert v.bias == pytest.approx((-0.01 + 0.03 + 0.005) / 3)
    assert v.spearman == pytest.approx(0.5)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)


def test_estimate_arms_reports_every_estimator_for_every_arm() -> None:
    bandit = Bandit(500, 5, 3)
    logged = bandit.log(0)
    w_prod = ALPHA0 / ALPHA0.sum()
    arms = {name: ArmTarget(pages=pages_from_weights(bandit.inputs, w, 3), weights=w)
            for name, w in {"production": w_prod, "price_heavy": np.array([0.1, 0.2, 0.7])}.items()}
    out = estimate_arms(logged, arms, bandit.objective, EXAM, kernel=Kernel(kappa=20.0), n_boot=200)
    assert set(out["estimates"]) == {"dm", "item_ips", "item_snips", "item_dr", "weight_ips",
                                     "weight_snips"}
    truth = bandit.true_value(arms["price_heavy"].pages).mean() / \
        bandit.true_value(arms["production"].pages).mean() - 1
    for est, per_arm in out["estimates"].items():
        assert set(per_arm) == {"price_heavy"}
        metrics = per_arm["price_heavy"]
        assert {"ctr", "cvr", "opm", "gpm", "value"} <= set(metrics), est
        lo, hi = metrics["value"]["ci95"]
        assert lo <= metrics["value"]["rel"] <= hi
    dm = out["estimates"]["dm"]["price_heavy"]["value"]["rel"]
    assert dm == pytest.approx(truth, rel=1e-9)  # exact predictions: DM is the truth
    no_prop = LoggedRequests(position=logged.position, labels=logged.labels, preds=logged.preds,
                             price=logged.price)
    out = estimate_arms(no_prop, arms, bandit.objective, EXAM, n_boot=50)
    assert "weight_ips" in out["skipped"] and "dm" in out["estimates"]
    with pytest.raises(DataError, match="propensity"):
        estimate_arms(no_prop, arms, bandit.objective, EXAM, estimators=["weight_ips"])


def test_ope_imports_only_the_ground_floor() -> None:
    allowed = {"numpy", "torch", "pyarrow", "blendrank.errors", "blendrank.ope"}
    for path in Path(__file__).parents[1].joinpath("src/blendrank/ope").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                if top == "blendrank":
                    assert any(name == a or name.startswith(a + ".") for a in allowed), (path, name)
                else:
                    assert top in {"numpy", "torch", "pyarrow", "__future__", "collections",
                                   "dataclasses", "typing", "math"}, (path, name)
