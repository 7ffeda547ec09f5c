"""KuaiRand-Pure → data-contract Parquet (docs/kuairand.md).

The vendored copy in ``blendrank/resources/kuairand`` (CC BY-SA 4.0, see its ``ATTRIBUTION.md``)
is turned into pseudo-requests (one user's impressions within one calendar day), de-duplicated
per (request, item), joined with the basic user / video features and split by date into
``train.parquet``, ``valid.parquet`` and ``test.parquet``. Everything is vectorised (numpy +
pyarrow); the whole conversion takes about a second. See ``docs/kuairand.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from importlib.resources import as_file, files
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from blendrank.data.kuairand_history import HISTORY_FEATURES, PRIOR_STRENGTH, history_features
from blendrank.errors import DataError
from blendrank.objective import OBJECTIVE_FILE, Objective

if TYPE_CHECKING:
    from rich.console import Group

RESOURCE = ("resources", "kuairand")
LOG_FILE, USERS_FILE, VIDEOS_FILE = "log.parquet", "users.parquet", "videos.parquet"

#: objective -> raw log column (all 0/1). ``hate`` is a negative signal.
BINARY_LABELS: dict[str, str] = {
    "click": "is_click",
    "long_view": "long_view",
    "like": "is_like",
    "follow": "is_follow",
    "comment": "is_comment",
    "forward": "is_forward",
    "profile_enter": "is_profile_enter",
    "hate": "is_hate",
}
#: watch time in ms: a regression target, not a probability.
REGRESSION_LABELS: dict[str, str] = {"play_time_ms": "play_time_ms"}
OBJECTIVES: tuple[str, ...] = (*BINARY_LABELS, *REGRESSION_LABELS)

#: split -> (first date, last date), inclusive, by the pseudo-request's date *(our choice)*.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (20220425, 20220503),
    "valid": (20220504, 20220505),
    "test": (20220506, 20220508),
}

#: Hand-set "production" fusion weights (our choice, not Kuaishou's): a feed blend dominated by
#: click and long view, with small terms for the rarer engagement signals. Sums to 1.
PRODUCTION_WEIGHTS: dict[str, float] = {
    "click": 0.45,
    "long_view": 0.35,
    "like": 0.08,
    "follow": 0.05,
    "comment": 0.03,
    "forward": 0.02,
    "profile_enter": 0.02,
}

Kind = Literal["categorical", "numeric"]
Source = Literal["user", "video", "log"]
Transform = Literal["standard", "log1p_standard"]


class Feature(NamedTuple):
    """One ``f_`` column: where it comes from and how the Feature Center should treat it."""

    source: Source  # user table, video table, or the log row itself (context)
    column: str
    kind: Kind
    transform: Transform = "standard"  # numeric only

    @property
    def role(self) -> str:
        return {"user": "user", "video": "item", "log": "context"}[self.source]


#: f_<role>_<name> -> Feature. Names carry the Feature Center's role prefixes (``f_user_``,
#: ``f_item_``, ``f_ctx_``). Categorical ints are int64, categorical strings are strings, numeric
#: features are float64. Only the *basic* video features are used: KuaiRand's per-video
#: statistics are aggregated over the whole month and leak the validation / test days.
FEATURES: dict[str, Feature] = {
    "f_user_active_degree": Feature("user", "user_active_degree", "categorical"),
    "f_user_is_lowactive_period": Feature("user", "is_lowactive_period", "categorical"),
    "f_user_is_live_streamer": Feature("user", "is_live_streamer", "categorical"),
    "f_user_is_video_author": Feature("user", "is_video_author", "categorical"),
    "f_user_follow_num": Feature("user", "follow_user_num", "numeric", "log1p_standard"),
    "f_user_fans_num": Feature("user", "fans_user_num", "numeric", "log1p_standard"),
    "f_user_friend_num": Feature("user", "friend_user_num", "numeric", "log1p_standard"),
    "f_user_register_days": Feature("user", "register_days", "numeric", "log1p_standard"),
    **{
        f"f_user_onehot_feat{i}": Feature("user", f"onehot_feat{i}", "categorical")
        for i in range(18)
    },
    "f_item_video_type": Feature("video", "video_type", "categorical"),
    "f_item_upload_type": Feature("video", "upload_type", "categorical"),
    "f_item_video_duration": Feature("video", "video_duration", "numeric", "log1p_standard"),
    "f_item_music_type": Feature("video", "music_type", "categorical"),
    "f_item_tag": Feature("video", "first_tag", "categorical"),
    "f_item_author_id": Feature("video", "author_id", "categorical"),
    "f_ctx_tab": Feature("log", "tab", "categorical"),
    "f_ctx_hour": Feature("log", "hour", "categorical"),
}
#: Explicit fills for missing values (nulls, empty tags, users/videos absent from their tables).
#: Strings use upstream's own "UNKNOWN" label; a missing video duration becomes 0, which is what
#: the log itself records (duration_ms = 0) for those videos.
FILL_CATEGORICAL_INT = -1
FILL_CATEGORICAL_STR = "UNKNOWN"
FILL_NUMERIC = 0.0


@contextmanager
def vendored_paths(source_dir: str | Path | None = None) -> Iterator[dict[str, Path]]:
    """Paths of the vendored ``log``, ``users`` and ``videos`` Parquet files (or ``source_dir``'s)."""
    names = {"log": LOG_FILE, "users": USERS_FILE, "videos": VIDEOS_FILE}
    if source_dir is not None:
        paths = {k: Path(source_dir) / v for k, v in names.items()}
        for path in paths.values():
            if not path.is_file():
                raise DataError(f"{path}: KuaiRand file not found")
        yield paths
        return
    root = files("blendrank").joinpath(*RESOURCE)
    for name in names.values():
        if not (root / name).is_file():
            raise DataError(
                f"the vendored KuaiRand copy is missing blendrank/{'/'.join(RESOURCE)}/{name}; "
                "reinstall blendrank (package data) or pass a source directory"
            )
    with ExitStack() as stack:
        yield {k: stack.enter_context(as_file(root / v)) for k, v in names.items()}


def load_vendored(source_dir: str | Path | None = None) -> dict[str, pa.Table]:
    """The vendored raw tables: ``log`` (228,329 rows), ``users`` and ``videos``."""
    with vendored_paths(source_dir) as paths:
        return {k: pq.read_table(p) for k, p in paths.items()}


def _check_splits(splits: Mapping[str, tuple[int, int]]) -> None:
    spans = sorted((lo, hi, name) for name, (lo, hi) in splits.items())
    for lo, hi, name in spans:
        if lo > hi:
            raise DataError(f"split {name!r}: first date {lo} is after last date {hi}")
    for (_, hi, a), (lo, _, b) in pairwise(spans):
        if lo <= hi:
            raise DataError(f"splits {a!r} and {b!r} overlap (dates are inclusive)")


def _lookup(ids: np.ndarray, table_ids: np.ndarray) -> pa.Array:
    """Row index of each id in a feature table; null where the id is absent."""
    size = int(max(ids.max(initial=0), table_ids.max(initial=0))) + 1
    pos = np.full(size, -1, dtype=np.int64)
    pos[table_ids] = np.arange(len(table_ids))
    idx = pos[ids]
    return pa.array(idx, mask=idx < 0)


def _finish_feature(col: pa.Array, kind: Kind) -> tuple[pa.Array, int, Any]:
    """Fill missing values explicitly; returns (column, rows filled, fill value)."""
    if pa.types.is_string(col.type):
        missing = pc.or_kleene(pc.is_null(col), pc.equal(col, "")).fill_null(True)
        filled = pc.if_else(missing, FILL_CATEGORICAL_STR, col)
        return filled, int(pc.sum(missing).as_py() or 0), FILL_CATEGORICAL_STR
    n_missing = col.null_count
    if kind == "numeric":
        return col.cast(pa.float64()).fill_null(FILL_NUMERIC), n_missing, FILL_NUMERIC
    return col.cast(pa.int64()).fill_null(FILL_CATEGORICAL_INT), n_missing, FILL_CATEGORICAL_INT


def _history_columns(
    uid: np.ndarray,
    vid: np.ndarray,
    date: np.ndarray,
    labels: Mapping[str, np.ndarray],
    videos: pa.Table,
) -> dict[str, np.ndarray]:
    """:func:`history_features` of merged impressions; a video's author and first tag come from
    the video table (-1 where missing: no author / tag history is attributed)."""
    idx = _lookup(vid, videos["video_id"].to_numpy())
    author = videos["author_id"].take(idx).combine_chunks().cast(pa.int64()).fill_null(-1)
    tag_col = videos["first_tag"].take(idx).combine_chunks()
    tag_missing = pc.or_kleene(pc.is_null(tag_col), pc.equal(tag_col, "")).fill_null(True)
    tag_codes = pc.dictionary_encode(tag_col.fill_null("")).indices.to_numpy(zero_copy_only=False)
    tag = np.where(tag_missing.to_numpy(zero_copy_only=False), -1, tag_codes).astype(np.int64)
    return history_features(uid, vid, author.to_numpy(), tag, date, labels)


def _merge_runs(
    order: np.ndarray, keys: tuple[np.ndarray, ...], labels: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Collapse runs of equal ``keys`` along ``order`` (a sort by those keys).

    Returns the index of each run's first row, every label's max over the run (aligned with
    those indices) and the number of runs whose rows disagree on some label.
    """
    change = np.zeros(len(order), dtype=bool)
    change[0] = True
    for key in keys:
        k = key[order]
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    merged: dict[str, np.ndarray] = {}
    conflict = np.zeros(len(starts), dtype=bool)
    for name, values in labels.items():
        v = values[order]
        merged[name] = np.maximum.reduceat(v, starts)
        conflict |= merged[name] != np.minimum.reduceat(v, starts)
    return order[starts], merged, int(conflict.sum())


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 3),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": int(values.max()),
    }


def _split_summary(table: pa.Table, dates: np.ndarray, train_users: np.ndarray | None) -> dict:
    rid = table["request_id"].to_numpy()
    users = np.unique(table["user_id"].to_numpy())
    _, sizes = np.unique(rid, return_counts=True)
    out: dict[str, Any] = {
        "dates": [int(dates.min()), int(dates.max())] if len(dates) else [],
        "days": len(np.unique(dates)),
        "requests": len(sizes),
        "impressions": int(table.num_rows),
        "users": len(users),
        "items": len(np.unique(table["item_id"].to_numpy())),
        "candidates_per_request": _stats(sizes),
        "label_rates": {
            k: round(float(table[f"label_{k}"].to_numpy().mean()), 5) if table.num_rows else None
            for k in BINARY_LABELS
        },
        "play_time_ms_mean": (
            round(float(table["label_play_time_ms"].to_numpy().mean()), 1)
            if table.num_rows
            else None
        ),
    }
    if train_users is not None:
        out["users_unseen_in_train"] = int((~np.isin(users, train_users)).sum())
    return out


def objective_yaml(weights: Mapping[str, float] = PRODUCTION_WEIGHTS) -> str:
    """The log's business objective as YAML (docs/objective.md): the hand-set production fusion,
    whose weights are also the value of each behaviour."""
    total = sum(weights.values())
    normalised = {k: round(v / total, 6) for k, v in weights.items()}
    body = Objective(value=normalised, production_weights=normalised)
    header = (
        "# The KuaiRand log's business objective (blendrank's choice; Kuaishou's real formula is not\n"
        "# public): a feed blend dominated by click and long view, with small terms for the rarer\n"
        "# engagement signals, and the same weights as the hand-set production fusion. 'hate' is a\n"
        "# negative signal and is not fused; play_time_ms is a regression target and is not fused\n"
        "# here. See docs/kuairand.md and docs/objective.md.\n"
    )
    return header + body.to_yaml()


def features_yaml(history: bool = False) -> str:
    """The feature schema of the ``f_`` columns (Feature Center ``FeatureSchema`` layout);
    with ``history``, the ``f_hist_`` columns of :mod:`blendrank.data.kuairand_history` too."""
    specs = []
    for name, f in FEATURES.items():
        spec: dict[str, Any] = {"name": name, "kind": f.kind, "role": f.role}
        if f.kind == "numeric":
            spec["transform"] = f.transform
        specs.append(spec)
    if history:
        specs += [
            {"name": name, "kind": "numeric", "role": h.role, "transform": h.transform}
            for name, h in HISTORY_FEATURES.items()
        ]
    header = (
        "# Feature schema of blendrank's KuaiRand conversion (declared, not inferred: several\n"
        "# integer categoricals such as author_id have thousands of values). See docs/kuairand.md.\n"
    )
    return header + yaml.safe_dump({"features": specs}, sort_keys=False)


def build_kuairand(
    out_dir: str | Path,
    min_items: int = 5,
    splits: Mapping[str, tuple[int, int]] = SPLITS,
    production_weights: Mapping[str, float] = PRODUCTION_WEIGHTS,
    source_dir: str | Path | None = None,
    history: bool = False,
) -> dict[str, Any]:
    """Convert the vendored KuaiRand copy to contract Parquet in ``out_dir``.

    Writes ``train.parquet``, ``valid.parquet``, ``test.parquet``, ``summary.json``,
    ``objective.yaml`` (the business objective with the hand-set production fusion weights) and ``features.yaml`` (the feature
    schema); returns the summary dict.

    Args:
        out_dir: output directory (created).
        min_items: pseudo-requests with fewer distinct items are dropped (and counted); ≥ 1.
            1 keeps single-video user-days, which pointwise training can use but which fail the
            data contract's ≥ 2-candidates rule and carry no within-request ranking: build
            evaluation splits with ≥ 2.
        splits: split name -> inclusive (first, last) ``yyyymmdd`` dates; must not overlap.
        production_weights: objective -> weight of the hand-set production blend.
        source_dir: read ``log/users/videos.parquet`` from here instead of the vendored copy.
        history: add the ``f_hist_*`` user-history features (computed from strictly earlier
            days only; :mod:`blendrank.data.kuairand_history`) and declare them in
            ``features.yaml``.
    """
    if min_items < 1:
        raise DataError(
            f"min_items={min_items}: must be at least 1 (use ≥ 2 for evaluation splits)"
        )
    _check_splits(splits)
    unknown = set(production_weights) - set(BINARY_LABELS)
    if unknown or any(w < 0 for w in production_weights.values()):
        raise DataError(
            f"production weights must be non-negative and over {list(BINARY_LABELS)}; "
            f"got {dict(production_weights)}"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")

    raw = load_vendored(source_dir)
    log, users, videos = raw["log"], raw["users"], raw["videos"]
    n_raw = log.num_rows
    if n_raw == 0:
        raise DataError("the KuaiRand log is empty")
    uid = log["user_id"].to_numpy().astype(np.int64)
    vid = log["video_id"].to_numpy().astype(np.int64)
    date = log["date"].to_numpy().astype(np.int64)
    t = log["time_ms"].to_numpy().astype(np.int64)
    rid = uid * 100_000_000 + date  # deterministic and readable: user 7, 2022-05-01 -> 720220501
    label_raw = {k: log[c].to_numpy() for k, c in {**BINARY_LABELS, **REGRESSION_LABELS}.items()}

    # 1. Upstream duplicates: one row per (user, video, time_ms). The copy with the earliest
    #    (date, hourmin) is kept: duplicates straddling midnight are logged on both days.
    hourmin_raw = log["hourmin"].to_numpy()
    order = np.lexsort((np.arange(n_raw), hourmin_raw, date, t, vid, uid))
    keep, labels, conflicts_exact = _merge_runs(order, (uid, vid, t), label_raw)
    n_exact = n_raw - len(keep)
    # 2. One row per (request, item): the first impression of the day is kept, labels = max.
    k_rid, k_vid, k_t = rid[keep], vid[keep], t[keep]
    order = np.lexsort((np.arange(len(keep)), k_t, k_vid, k_rid))
    sel, labels, conflicts_repeat = _merge_runs(order, (k_rid, k_vid), labels)
    keep = keep[sel]
    n_repeat = len(order) - len(sel)

    videos = videos.append_column(
        "first_tag", pc.list_element(pc.split_pattern(videos["tag"], ","), 0)
    )
    hist: dict[str, np.ndarray] = {}
    if history:
        # Over every merged impression (small requests included): a row's history is the
        # user's / video's whole earlier log, not only the requests kept below.
        hist = _history_columns(uid[keep], vid[keep], date[keep], labels, videos)

    # 3. Order each pseudo-request by (time_ms, video_id); drop small requests.
    o2 = np.lexsort((vid[keep], t[keep], rid[keep]))
    rows = keep[o2]
    labels = {k: v[o2] for k, v in labels.items()}
    d_rid = rid[rows]
    new_req = np.r_[True, d_rid[1:] != d_rid[:-1]]
    req_starts = np.flatnonzero(new_req)
    req_index = np.cumsum(new_req) - 1
    sizes = np.diff(np.r_[req_starts, len(rows)])
    position = np.arange(len(rows)) - req_starts[req_index] + 1
    big = sizes[req_index] >= min_items
    rows, position = rows[big], position[big]
    labels = {k: v[big] for k, v in labels.items()}
    hist = {k: v[o2][big] for k, v in hist.items()}
    n_small_requests = int((sizes < min_items).sum())

    # 4. Assemble contract columns and features.
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(rid[rows]),
        "user_id": pa.array(uid[rows]),
        "ts": pa.array(t[rows]),
        "item_id": pa.array(vid[rows]),
        "position": pa.array(position.astype(np.int32)),
    }
    for k in BINARY_LABELS:
        columns[f"label_{k}"] = pa.array(labels[k].astype(np.int8))
    for k in REGRESSION_LABELS:
        columns[f"label_{k}"] = pa.array(labels[k].astype(np.float64))

    hourmin = hourmin_raw[rows].astype(np.int64)
    sources = {
        "user": users.take(_lookup(uid[rows], users["user_id"].to_numpy())),
        "video": videos.take(_lookup(vid[rows], videos["video_id"].to_numpy())),
        "log": pa.table({"tab": log["tab"].take(pa.array(rows)), "hour": pa.array(hourmin // 100)}),
    }
    missing: dict[str, dict[str, Any]] = {}
    for name, feat in FEATURES.items():
        raw_col = sources[feat.source][feat.column].combine_chunks()
        col, n_missing, fill = _finish_feature(raw_col, feat.kind)
        columns[name] = col
        if n_missing:
            missing[name] = {"fill": fill, "rows": n_missing}
    for name, values in hist.items():
        columns[name] = pa.array(values)
    table = pa.table(columns)

    # 5. Split by the pseudo-request's date and write.
    out.mkdir(parents=True, exist_ok=True)
    row_date = date[rows]
    split_summaries: dict[str, Any] = {}
    train_users: np.ndarray | None = None
    in_any = np.zeros(len(rows), dtype=bool)
    for name, (lo, hi) in splits.items():
        in_split = (row_date >= lo) & (row_date <= hi)
        in_any |= in_split
        part = table.filter(pa.array(in_split))
        pq.write_table(part, out / f"{name}.parquet", compression="zstd")
        split_summaries[name] = _split_summary(part, row_date[in_split], train_users)
        if name == "train":
            train_users = np.unique(part["user_id"].to_numpy())
    (out / OBJECTIVE_FILE).write_text(objective_yaml(production_weights))
    (out / "features.yaml").write_text(features_yaml(history))

    kept_rid = rid[rows][in_any]
    _, kept_sizes = np.unique(kept_rid, return_counts=True)
    summary: dict[str, Any] = {
        "dataset": "kuairand",
        "source": "KuaiRand-Pure standard log 2022-04-25..05-08 (Gao et al., CIKM 2022), "
        "CC BY-SA 4.0; derived files carry the same licence",
        "min_items": min_items,
        "raw": {
            "impressions": n_raw,
            "users": len(np.unique(uid)),
            "items": len(np.unique(vid)),
            "pseudo_requests": len(np.unique(rid)),
        },
        "merged": {
            "rows": n_exact + n_repeat,
            "exact_duplicate_rows": n_exact,
            "same_day_repeat_rows": n_repeat,
            "exact_duplicates_with_differing_labels": conflicts_exact,
            "same_day_repeats_with_differing_labels": conflicts_repeat,
            "rule": "exact (user, video, time_ms) duplicates first, then one row per "
            "(request, item): first impression kept, labels = max over merged rows",
        },
        "dropped": {
            "requests_below_min_items": n_small_requests,
            "impressions_in_small_requests": int(len(big) - big.sum()),
            "impressions_outside_splits": int((~in_any).sum()),
        },
        "impressions": int(in_any.sum()),
        "requests": len(kept_sizes),
        "users": len(np.unique(uid[rows][in_any])),
        "items": len(np.unique(vid[rows][in_any])),
        "candidates_per_request": _stats(kept_sizes),
        "label_rates": {
            k: round(float(labels[k][in_any].mean()), 5) if in_any.any() else None
            for k in BINARY_LABELS
        },
        "splits": split_summaries,
        "objectives": list(OBJECTIVES),
        "features": {name: f"{f.role} {f.kind}" for name, f in FEATURES.items()}
        | {name: f"{h.role} numeric" for name, h in HISTORY_FEATURES.items() if history},
        "missing_filled": missing,
        "production_weights": dict(production_weights),
        "files": [f"{name}.parquet" for name in splits]
        + ["summary.json", OBJECTIVE_FILE, "features.yaml"],
    }
    if history:
        summary["history"] = {
            "rule": "counts and smoothed rate lifts from strictly earlier days (log date) only",
            "prior_strength": PRIOR_STRENGTH,
            "features": list(HISTORY_FEATURES),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: Mapping[str, Any]) -> Group:
    """A one-screen (80 columns) rich rendering of :func:`build_kuairand`'s summary."""
    from rich.console import Group
    from rich.table import Table

    raw, merged, dropped = summary["raw"], summary["merged"], summary["dropped"]
    head = Table.grid(padding=(0, 2))
    head.add_row(
        "raw",
        f"{raw['impressions']:,} impressions, {raw['users']:,} users, "
        f"{raw['items']:,} videos, {raw['pseudo_requests']:,} user-days",
    )
    head.add_row(
        "merged",
        f"{merged['exact_duplicate_rows']:,} exact duplicates, "
        f"{merged['same_day_repeat_rows']:,} same-day repeats",
    )
    head.add_row(
        f"dropped < {summary['min_items']}",
        f"{dropped['requests_below_min_items']:,} requests, "
        f"{dropped['impressions_in_small_requests']:,} impressions",
    )
    head.add_row(
        "kept",
        f"{summary['impressions']:,} impressions, {summary['requests']:,} "
        f"requests, {summary['users']:,} users, {summary['items']:,} videos",
    )
    filled = summary["missing_filled"]
    if filled:
        most = max(v["rows"] for v in filled.values())
        head.add_row(
            "filled",
            f"missing values in {len(filled)} features (≤ {most:,} rows each; see summary.json)",
        )

    splits = Table(box=None, padding=(0, 1), header_style="bold")
    for col in (
        "split",
        "dates",
        "requests",
        "impr.",
        "users",
        "items",
        "c/req",
        "click",
        "lview",
        "like",
    ):
        splits.add_column(
            col, justify="left" if col in ("split", "dates") else "right", no_wrap=True
        )
    for name, s in summary["splits"].items():
        rates = s["label_rates"]
        dates = "…".join(f"{d % 10000 // 100:02d}-{d % 100:02d}" for d in s["dates"])
        splits.add_row(
            name,
            dates,
            f"{s['requests']:,}",
            f"{s['impressions']:,}",
            f"{s['users']:,}",
            f"{s['items']:,}",
            f"{s['candidates_per_request'].get('mean', 0):.1f}",
            *(
                f"{rates[k]:.3f}" if rates[k] is not None else "-"
                for k in ("click", "long_view", "like")
            ),
        )
    weights = " ".join(f"{k}={v:g}" for k, v in summary["production_weights"].items())
    return Group(head, "", splits, "", f"production: {weights}")
