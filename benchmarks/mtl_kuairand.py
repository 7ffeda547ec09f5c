"""MMoE vs the per-task logistic regression on KuaiRand: GAUC per objective on the test days.

Both models see exactly the same features (the declared ``features.yaml`` schema: the logistic
baseline gets the same categorical/numeric split and the same signed-log1p numerics) and the
same training rows; the test split is always the standard one (``blendrank data kuairand``,
pseudo-requests with >= 5 videos, 05-06 … 05-08). GAUC is uniform over requests, single-class
requests skipped (the same requests for both models); the CI is a paired bootstrap over requests
of the GAUC difference (``--ci-unit user``: over users, each resampled with all its requests).
"Δ seed mean" compares the per-request GAUC averaged over the MMoE seeds with the logistic one.

``--train-min-items`` picks the training rows: 5 (default) trains on the standard training split
(29k impressions); 2 trains on every training-day pseudo-request with >= 2 videos (103k
impressions; a pointwise model does not need long lists). The validation table is what the
MMoE settings were chosen on; the test table was not looked at for any choice.

``--train-min-items 1`` also keeps single-video user-days (about 150k impressions): pointwise
training can use them; evaluation always uses the standard >= 5-video splits.

``--history on`` builds every split with ``build_kuairand(..., history=True)``: the 21
``f_hist_*`` user / video / author / user × tag / user × author history features, computed from
strictly earlier days only (docs/kuairand.md), given to *both* models.

``--ids user_id,item_id`` adds the ids as categorical features ``f_user_id`` / ``f_item_id`` to
*both* models (MMoE: an embedding and a wide weight per id seen ``--id-min-count`` times in
training, the rest share the OOV row; logistic: one weight per id); the logistic model still
sees exactly the MMoE's feature set.

    python benchmarks/mtl_kuairand.py [--train-min-items 5] [--history on|off] [--seeds 0,1,2] [--ids user_id,item_id] [--set key=value …]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from blendrank.config import apply_overrides
from blendrank.data.kuairand import build_kuairand
from blendrank.data.slates import to_slates
from blendrank.features.center import FeatureSchema
from blendrank.metrics import bootstrap_ci, gauc
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import load_schema
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.logistic import LogisticConfig, fit_logistic

OBJECTIVES = ["click", "long_view", "like", "profile_enter"]
#: MMoE settings chosen on the validation split (docs/mtl.md, "KuaiRand").
KUAIRAND_MMOE = {"wide_lr": 0.02}


def logistic_view(table: pa.Table, schema: FeatureSchema) -> pa.Table:
    """The logistic baseline's input: the same features, with signed log1p applied up front to
    the numerics the schema declares ``log1p_standard`` (the baseline then z-scores them)."""
    for spec in schema.features:
        if not spec.is_categorical and spec.transform == "log1p_standard":
            x = table[spec.name].to_numpy(zero_copy_only=False).astype(np.float64)
            i = table.schema.get_field_index(spec.name)
            table = table.set_column(i, spec.name, pa.array(np.sign(x) * np.log1p(np.abs(x))))
    keep = [c for c in table.column_names if not c.startswith("f_") or c in schema.names]
    return table.select(keep)


def with_ids(table: pa.Table, ids: list[str]) -> pa.Table:
    """``table`` with each id column copied to a categorical feature ``f_<id>``."""
    for name in ids:
        table = table.append_column(f"f_{name}", table[name])
    return table


def schema_with_ids(path: Path, ids: list[str], min_count: int) -> Path:
    """A copy of the features.yaml at ``path`` declaring ``f_<id>`` categoricals (min_count)."""
    data = yaml.safe_load(path.read_text())
    role = {"user_id": "user", "item_id": "item"}
    data["features"] += [{"name": f"f_{n}", "kind": "categorical", "role": role.get(n, "item"),
                          "min_count": min_count} for n in ids]
    out = path.with_name("features_ids.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def request_users(table: pa.Table) -> np.ndarray:
    """``[R]`` user of each request, in :func:`per_request_gauc`'s order (first appearance)."""
    _, first = np.unique(table["request_id"].to_numpy(), return_index=True)
    return table["user_id"].to_numpy()[np.sort(first)]


def cluster_bootstrap_ci(diff: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0):
    """Mean of per-request ``diff [R]`` and its 95% percentile CI when whole ``groups [R]``
    (users) are resampled with replacement (their requests are not independent)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(inv, weights=diff), np.bincount(inv)
    draws = np.random.default_rng(seed).integers(len(uniq), size=(n_boot, len(uniq)))
    stats = sums[draws].sum(1) / counts[draws].sum(1)
    return float(diff.mean()), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def per_request_gauc(table: pa.Table, pred: np.ndarray, objective: str) -> np.ndarray:
    t = table.select(["request_id", "position", f"label_{objective}"]).append_column(
        "_p", pa.array(pred.astype(np.float32))
    )
    s = to_slates(t, ["_p", f"label_{objective}"])
    r = gauc(s.columns["_p"], s.columns[f"label_{objective}"], s.mask, skip_constant_pred=False)
    return r.per_request.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train-min-items", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2", help="MMoE seeds (mean and spread reported)")
    ap.add_argument("--model", default="mmoe", choices=["mmoe", "ple", "shared_bottom"])
    ap.add_argument("--set", action="append", default=[], help="extra MTLConfig overrides")
    ap.add_argument("--splits", default="valid,test", help="splits to report")
    ap.add_argument("--ci-unit", default="request", choices=["request", "user"],
                    help="paired bootstrap over requests (user-days) or over users (all their requests together)")
    ap.add_argument("--ids", default="", help="comma-separated id columns given to both models as features")
    ap.add_argument("--history", default="off", choices=["on", "off"],
                    help="f_hist_* user-history features (earlier days only) for both models")
    ap.add_argument("--id-min-count", type=int, default=3, help="MMoE: ids seen fewer times share the OOV row")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mtl_kuairand_"))
    std = tmp / "std"
    history = args.history == "on"
    build_kuairand(std, min_items=5, history=history)
    train_dir = std
    if args.train_min_items != 5:
        train_dir = tmp / f"min{args.train_min_items}"
        build_kuairand(train_dir, min_items=args.train_min_items, history=history)
    ids = [c for c in args.ids.split(",") if c]
    features = schema_with_ids(std / "features.yaml", ids, args.id_min_count) if ids else std / "features.yaml"
    schema = load_schema(features)
    train = with_ids(pq.read_table(train_dir / "train.parquet"), ids)
    valid_fit = with_ids(pq.read_table(train_dir / "valid.parquet"), ids)  # early stopping
    tables = {s: with_ids(pq.read_table(std / f"{s}.parquet"), ids) for s in args.splits.split(",")}

    # ---- logistic baseline on the same features
    t0 = time.perf_counter()
    lr = fit_logistic(logistic_view(train, schema), None, LogisticConfig(max_int_categories=10**9))
    lr_seconds = time.perf_counter() - t0
    kinds = {n: "categorical" for n in lr.center.categorical_names()}
    kinds |= {n: "numeric" for n in lr.center.numeric_names()}
    assert kinds == {s.name: s.kind for s in schema.features}, "feature kinds differ"
    lr_pred = {k: lr.predict(logistic_view(t, schema)) for k, t in tables.items()}

    # ---- MMoE, several seeds
    overrides = {**KUAIRAND_MMOE, "model": args.model}
    seeds = [int(s) for s in args.seeds.split(",")]
    mtl_pred: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in tables}
    fits = []
    for seed in seeds:
        cfg = MTLConfig.model_validate(apply_overrides({**overrides, "seed": seed}, args.set))
        t0 = time.perf_counter()
        p = fit_mtl(train, valid_fit, cfg, features_file=features, progress=False)
        fits.append((time.perf_counter() - t0, p.training))
        for k, t in tables.items():
            mtl_pred[k].append(p.predict(t))

    n_train = train.num_rows
    print(
        f"KuaiRand, training rows: pseudo-requests with >= {args.train_min_items} videos on "
        f"04-25…05-03 ({n_train:,} impressions); {args.model} settings {overrides} "
        f"{args.set or ''}; seeds {seeds}; id features {ids or 'none'}; history {args.history} "
        f"({len(schema.features)} features)"
    )
    print(
        f"logistic fit {lr_seconds:.1f}s; {args.model} fit "
        + ", ".join(
            f"{s:.0f}s (best epoch {tr['best_epoch']}, {tr['impressions_per_s']:,.0f} impr/s)"
            for s, tr in fits
        )
    )
    for split, table in tables.items():
        print(
            f"\n#### {split} ({table.num_rows:,} impressions, {len(pc.unique(table['request_id'])):,} requests)\n"
        )
        print(
            f"| objective | requests | users | logistic GAUC | {args.model} GAUC (mean ± sd over seeds) "
            f"| Δ GAUC, seed {seeds[0]} [95% CI] | Δ GAUC, seed mean [95% CI] | {args.model} wins |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|:---:|")
        for obj in OBJECTIVES:
            base = per_request_gauc(table, lr_pred[split][obj], obj)
            runs = [per_request_gauc(table, m[obj], obj) for m in mtl_pred[split]]
            used = ~np.isnan(base)
            means = np.array([np.nanmean(r) for r in runs])
            users = request_users(table)[used]

            def ci(d, users=users):
                if args.ci_unit == "user":
                    return cluster_bootstrap_ci(d, users)
                return bootstrap_ci(d, n_boot=2000, seed=0)

            diff, lo, hi = ci(runs[0][used] - base[used])
            avg, alo, ahi = ci(np.mean(runs, 0)[used] - base[used])
            sd = means.std(ddof=1) if len(means) > 1 else math.nan
            print(
                f"| {obj} | {int(used.sum()):,} | {len(np.unique(users)):,} | {np.nanmean(base):.4f} | {means.mean():.4f} ± "
                f"{sd:.4f} | {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] | {avg:+.4f} [{alo:+.4f}, {ahi:+.4f}] | "
                f"{int((means > np.nanmean(base)).sum())}/{len(means)} |"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
