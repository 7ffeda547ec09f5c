"""Marketplace logged traffic: each estimator's lift of a few fixed weight vectors vs production,
against the exact expected lift on the same requests (world predictor).

    PYTHONPATH=src python benchmarks/ope_marketplace_check.py [PRESET] [N_REQUESTS]
"""
import sys
import time

import numpy as np

from blendrank.ope import (
    ArmTarget,
    Kernel,
    PageObjective,
    estimate_arms,
    logged_requests_from_table,
    pages_from_weights,
    validate,
)
from blendrank.worlds.logging_policy import STREAM_LOGS, generate_shard
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

preset = sys.argv[1] if len(sys.argv) > 1 else "quick"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
world = MarketplaceWorld(world_config(preset))
cfg = world.config
table = generate_shard(world, 0, n)
rng = np.random.default_rng([cfg.seed, STREAM_LOGS, 0])
req = world.sample_requests(n, rng)
truth = world.truth(req)
t0 = time.time()
logged = logged_requests_from_table(table, world.objectives, fusion_inputs=cfg.fusion_inputs,
                                    price_scale=world.price_scale)
t_read = time.time() - t0
v = cfg.value
coefs = {"click": v.click, "order": v.order, "order*price": v.gmv,
         **{o.name: o.value_weight for o in cfg.extra_objectives}}
obj = PageObjective(coefs, np.ones(cfg.page_size), price_scale=world.price_scale)
exam = world.examination()
w0 = world.production_weights()
K = len(w0)
alts = {"production": w0}
for name, t in [("near", 0.15), ("mid", 0.35), ("far", 0.7)]:
    e = np.eye(K)[-1]  # toward price
    alts[f"price_{name}"] = (1 - t) * w0 + t * (0.5 * e + 0.5 * np.ones(K) / K)
    e2 = np.eye(K)[1]
    alts[f"order_{name}"] = (1 - t) * w0 + t * e2
arms = {a: ArmTarget(pages=pages_from_weights(logged.inputs, w, cfg.page_size, floor=cfg.fusion_floor), weights=w)
        for a, w in alts.items()}
t0 = time.time()
out = estimate_arms(logged, arms, obj, exam, kernel=Kernel(kappa=cfg.logging_concentration), n_boot=500)
t_est = time.time() - t0
true = {a: world.page_metrics(truth, arms[a].pages) for a in arms}
def rel(a, num, den=None):
    f = lambda x: true[x][num].mean() / (true[x][den].mean() if den else 1.0)
    return f(a) / f("production") - 1
ab = {a: {"value": {"rel": rel(a, "value"), "ci95": [rel(a, "value")] * 2},
          "ctr": {"rel": rel(a, "clicks", "impressions"), "ci95": [rel(a, "clicks", "impressions")] * 2},
          "gpm": {"rel": rel(a, "gmv", "impressions"), "ci95": [rel(a, "gmv", "impressions")] * 2}}
      for a in arms if a != "production"}
print(f"{preset} n={n} read {t_read:.1f}s estimate_arms {t_est:.1f}s")
print("arm          true_value " + " ".join(f"{e:>22s}" for e in out["estimates"]))
for a in ab:
    row = [f"{ab[a]['value']['rel']:+.4f}"]
    for e, per in out["estimates"].items():
        m = per[a]["value"]
        row.append(f"{m['rel']:+.4f}[{m['ci95'][0]:+.3f},{m['ci95'][1]:+.3f}]")
    print(f"{a:12s} " + " ".join(f"{x:>22s}" for x in row))
for e, per in out["estimates"].items():
    val = validate(per, ab, metrics=("value", "ctr", "gpm"))
    print(e, {k: round(x, 3) if isinstance(x, float) else x for k, x in val.to_dict().items()},
          {a: {k: round(x, 3) for k, x in d.items()} for a, d in list(out["diagnostics"][e].items())[:2]})
