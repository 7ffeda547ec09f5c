"""Every estimator's validation against the simulated A/B, per world bench, as Markdown tables
(the figures of docs/ope.md), plus the pooled figures of each estimator over every world.

    PYTHONPATH=src python benchmarks/ope_validation_table.py BENCH_DIR [BENCH_DIR ...]

Each BENCH_DIR is the --out of a `blendrank bench --world ...` run (its bench.json has `ope`).
"""

import json
import sys
from pathlib import Path

from blendrank.ope import validate


def fmt(x, pct=False, signed=True):
    if x is None:
        return "–"
    return (f"{x:+.1%}" if signed else f"{x:.1%}") if pct else f"{x:.2f}"


pooled: dict[str, dict[str, list]] = {}
for d in sys.argv[1:]:
    b = json.loads((Path(d) / "bench.json").read_text())
    ope = b["ope"]
    t = b["timings_s"]
    total = sum(v for v in t.values() if isinstance(v, (int, float)))
    print(
        f"\n**{b['world']} `{b['config']}`** — recommended `{ope.get('recommended')}`; "
        f"{ope.get('n_logged_requests')} logged requests; OPE {t.get('ope', 0):.1f} s of "
        f"{total:.0f} s ({t.get('ope', 0) / total:.1%}); skipped: "
        f"{ope.get('skipped') or 'none'}\n"
    )
    # An arm that serves production's pages (static_search held at production by the guard
    # rails) has lift 0 with CI [0, 0] in the A/B and in every estimator: trivially covered.
    same = {
        a
        for a, per in b["lifts"].items()
        if all(x is None or (x["rel"] == 0 and x["ci95"] == [0, 0]) for x in per.values())
    }
    print(
        "| estimator | coverage | coverage, arms ≠ production | sign agreement (pairs) | Spearman "
        "| bias | mean abs error | pairs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    mapping = ope.get("metric_map")
    for est, v in ope.get("validation", {}).items():
        star = " (rec.)" if est == ope.get("recommended") else ""
        ab_of = {
            a: {m: b["lifts"][a][mapping.get(m) if mapping else m] for m in v["metrics"]}
            for a in ope["estimates"][est]
            if a not in same
        }
        v_diff = validate(
            {a: ope["estimates"][est][a] for a in ab_of}, ab_of, metrics=v["metrics"]
        ).to_dict()
        print(
            f"| `{est}`{star} | {fmt(v['coverage'])} | {fmt(v_diff['coverage'])} | "
            f"{fmt(v['sign_agreement'])} ({v['n_sign_pairs']}) | {fmt(v['spearman'])} | "
            f"{fmt(v['bias'], True)} | {fmt(v['mean_abs_error'], True, False)} | {v['n_pairs']} |"
        )
        for arm, per_metric in ope["estimates"][est].items():
            for m, e in per_metric.items():
                tm = mapping.get(m) if mapping else m
                ab = (b["lifts"].get(arm) or {}).get(tm) if tm else None
                if ab is not None and arm not in same:
                    pooled.setdefault(est, {}).setdefault("pairs", []).append(
                        (f"{d}:{arm}", m, e, ab)
                    )
print("\n**Pooled over the worlds above (arms ≠ production)**\n")
print("| estimator | coverage | sign agreement (pairs) | bias | mean abs error | pairs |")
print("|---|---|---|---|---|---|")
for est, p in pooled.items():
    est_l = {f"{a}|{m}": {"value": e} for a, m, e, _ in p["pairs"]}
    ab_l = {f"{a}|{m}": {"value": t} for a, m, _, t in p["pairs"]}
    v = validate(est_l, ab_l).to_dict()
    print(
        f"| `{est}` | {fmt(v['coverage'])} | {fmt(v['sign_agreement'])} ({v['n_sign_pairs']}) | "
        f"{fmt(v['bias'], True)} | {fmt(v['mean_abs_error'], True, False)} | {v['n_pairs']} |"
    )
