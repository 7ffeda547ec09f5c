"""``bench.json`` -> ``report.md`` + ``report.html`` with plots.

The report reads ``bench.json`` (layout in docs/evaluation.md), and the run record ``run.json``
beside it when there is one, and copes with any section being absent: a minimal file with just
``arms`` works, and so does a log-only bench that has an ``offline`` section and no world. A
world bench opens with a summary (:mod:`blendrank.bench.summary`): the method that won on the
value metric, by how much with its CI, and the training runs to flag. A log bench (``bench
--data``) gets its own text: what it measured on the test split from the logged labels, never the
world's truth or its A/B.

Plots are drawn with matplotlib's Agg canvas (no pyplot, no global backend switch), saved as
PNG under ``<bench_dir>/plots/``, linked from the Markdown and embedded as base64 in the HTML
so that ``report.html`` is self-contained.

Public API::

    load_bench(bench_dir) -> dict                 # DataError on a missing dir / bad bench.json
    write_report(bench_dir, bench=None) -> (md_path, html_path)
    format_table(bench) -> rich.table.Table  # arms x key metrics, value lift + CI, oracle share
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from blendrank import __version__
from blendrank.bench.summary import (
    CEILING_ARMS,
    KL_RUNAWAY,
    kl_runaway,
    same_lifts,
    value_standings,
)
from blendrank.errors import BlendrankError, DataError
from blendrank.tracking import RUN_FILE

BENCH_FILE = "bench.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"

#: Column order for arm metrics; any other numeric metric follows in order of appearance.
METRIC_ORDER = (
    "ctr",
    "cvr",
    "opm",
    "gpm",
    "value",
    "orders_per_request",
    "gmv_per_request",
    "session_length",
)
#: Metrics shown by :func:`format_table` (those present, in this order).
KEY_METRICS = ("ctr", "cvr", "opm", "gpm", "value")
#: Header fields shown first, in this order; other top-level scalars follow.
HEADER_ORDER = (
    "world",
    "data",
    "mapping",
    "config",
    "seed",
    "n_eval_requests",
    "baseline_arm",
    "value_metric",
)

CONVENTIONS = (
    "CTR = clicks / impressions; CVR = orders / clicks; OPM = orders per 1000 impressions; "
    "GPM = GMV per 1000 impressions; orders and GMV per request are per served page. "
    "*Expected* metrics are computed under the world's true probabilities for the shown page "
    "(low variance; used for `arms` and `lifts`); *realised* metrics are sampled outcomes, as a "
    "real A/B test would see them. Every arm serves the same requests with common random numbers. "
    "Lift = arm / baseline - 1, with a 95% paired-bootstrap CI over requests. "
    "Oracle share = (arm - production) / (oracle - production) on the business value. "
    "Offline metrics (log-only benches) are means over test requests with 95% bootstrap CIs; "
    "see docs/metrics.md for NDCG/GAUC conventions."
)


#: What a log bench measured (its report's conventions; docs/evaluation.md).
LOG_CONVENTIONS = (
    "Every arm re-ranks the logged candidates of each test request; nothing is served or "
    "simulated. `value@k` = Σ over the first k positions of d(pos) · Σ_terms value · logged "
    "label (a price term: label × price), in the objective's units, from the labels the log "
    "recorded; candidates the log did not show count 0. `<term>@k` (`click@10`, "
    "`gmv@10` = order × price, …) is one term's discounted total, so `value@k` = "
    "Σ value · `<term>@k`. NDCG@k per objective, and the composite NDCG weighted by the "
    "objective's value of each behaviour; GAUC = AUC within a request, averaged over the "
    "requests with both classes. Means over test requests with 95% percentile-bootstrap CIs; "
    "lift = arm / production − 1 with a 95% paired-bootstrap CI over the same requests. The "
    "logged labels follow the order the log showed (position bias): the off-policy estimates, "
    "where present, correct for examination (docs/ope.md). Metric conventions: docs/metrics.md."
)


def is_log_bench(bench: Mapping[str, Any]) -> bool:
    """A bench on logs (``bench --data``, ``eval --data``): offline metrics, no world."""
    return not bench.get("world") and (bench.get("config") == "logs" or bool(bench.get("offline")))


# ----------------------------------------------------------------------------- loading


def _bench_path(bench_dir: Path) -> tuple[Path, Path]:
    bench_dir = Path(bench_dir)
    if bench_dir.is_file() and bench_dir.suffix == ".json":  # tolerate a path to bench.json itself
        return bench_dir.parent, bench_dir
    return bench_dir, bench_dir / BENCH_FILE


def load_bench(bench_dir: Path | str) -> dict[str, Any]:
    """Read and sanity-check ``<bench_dir>/bench.json``; raise :class:`DataError` if unusable."""
    directory, path = _bench_path(Path(bench_dir))
    if not directory.is_dir():
        raise DataError(
            f"--bench {directory}: no such directory; pass the --out directory of a "
            "`blendrank bench` run (it holds bench.json)"
        )
    if not path.is_file():
        raise DataError(
            f"{path}: bench.json not found; run `blendrank bench ... --out {directory}` first, "
            "or pass the directory that holds bench.json"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); check the file and its permissions") from exc
    try:
        bench = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
            "re-run `blendrank bench` to rewrite it or fix the file"
        ) from exc
    if not isinstance(bench, dict):
        raise DataError(
            f"{path}: expected a JSON object at the top level, got {type(bench).__name__}; "
            "re-run `blendrank bench` to rewrite it"
        )
    for key in (
        "arms",
        "arms_realised",
        "lifts",
        "lifts_vs_static",
        "oracle_share",
        "timings_s",
        "weights",
        "learning_curves",
        "offline",
    ):
        if key in bench and bench[key] is not None and not isinstance(bench[key], dict):
            raise DataError(
                f"{path}: `{key}` must be a JSON object, got {type(bench[key]).__name__}; "
                "re-run `blendrank bench` to rewrite it"
            )
    for key in ("arms", "arms_realised", "offline"):
        for arm, metrics in (bench.get(key) or {}).items():
            if not isinstance(metrics, dict):
                raise DataError(
                    f"{path}: `{key}.{arm}` must be an object of metric -> value, got "
                    f"{type(metrics).__name__}; re-run `blendrank bench` to rewrite it"
                )
    if not (bench.get("arms") or bench.get("arms_realised") or bench.get("offline")):
        raise DataError(
            f"{path}: no results (none of `arms`, `arms_realised`, `offline` has an entry); "
            "re-run `blendrank bench` to completion"
        )
    return bench


# ----------------------------------------------------------------------------- values


def _num(v: Any) -> float | None:
    """A finite-or-NaN float for int/float (not bool) values, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _fmt(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "–" if v is None else str(v)
    if math.isnan(x):
        return "nan"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if x != 0 and abs(x) >= 1000:
        return f"{x:,.1f}"
    return f"{x:.4g}"


def _pct(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if math.isnan(v):
        return "nan"
    return f"{v:+.{digits}%}"


def _ci(entry: Any, point_key: str) -> tuple[float | None, float | None, float | None]:
    """(point, lo, hi) from ``{point_key: x, "ci95": [lo, hi]}`` or a bare number."""
    if isinstance(entry, Mapping):
        point = _num(entry.get(point_key))
        ci = entry.get("ci95")
        lo = hi = None
        if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
            lo, hi = _num(ci[0]), _num(ci[1])
        return point, lo, hi
    return _num(entry), None, None


def _fmt_ci(
    point: float | None, lo: float | None, hi: float | None, pct: bool, digits: int = 2
) -> str:
    def f(v: float) -> str:
        return _pct(v, digits) if pct else _fmt(v)

    if point is None:
        return "–"
    if lo is None or hi is None:
        return f(point)
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def _ordered_metrics(
    rows: Iterable[Mapping[str, Any]], first: Sequence[str] = METRIC_ORDER, numeric: bool = True
) -> list[str]:
    seen: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in seen and (not numeric or _num(v) is not None or isinstance(v, Mapping)):
                seen.append(k)
    return [m for m in first if m in seen] + [m for m in seen if m not in first]


def _arm_order(bench: Mapping[str, Any], *sections: Mapping[str, Any]) -> list[str]:
    order: list[str] = []
    for section in ((bench.get("arms") or {}), *sections):
        for arm in section:
            if arm not in order:
                order.append(arm)
    return order


# ----------------------------------------------------------------------------- document model


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]
    align_left: int = 1  # how many leading columns are left-aligned labels


@dataclass
class _Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png path)
    notes: list[str] = field(default_factory=list)  # paragraphs after tables and images


# ----------------------------------------------------------------------------- plots


def _figure(n_panels: int, panel_w: float, panel_h: float, ncols: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _plot_ci_panels(
    data: Mapping[str, Mapping[str, tuple[float | None, float | None, float | None]]],
    metrics: list[str],
    arms: list[str],
    path: Path,
    pct: bool,
    zero_line: bool,
) -> Path | None:
    """One horizontal error-bar panel per metric; arms on the y axis."""
    metrics = [
        m for m in metrics if any(data.get(a, {}).get(m, (None,))[0] is not None for a in arms)
    ]
    if not metrics:
        return None
    fig, axes = _figure(len(metrics), 4.2, 0.45 * len(arms) + 1.3)
    scale = 100.0 if pct else 1.0
    for ax, metric in zip(axes, metrics):
        ys, labels = [], []
        for i, arm in enumerate(arms):
            point, lo, hi = data.get(arm, {}).get(metric, (None, None, None))
            y = len(arms) - 1 - i
            ys.append(y)
            labels.append(arm)
            if point is None or math.isnan(point):
                continue
            color = "tab:gray"
            if lo is not None and hi is not None:
                if zero_line and lo > 0:
                    color = "tab:green"
                elif zero_line and hi < 0:
                    color = "tab:red"
                elif not zero_line:
                    color = "tab:blue"
                xerr = [[max(point - lo, 0.0) * scale], [max(hi - point, 0.0) * scale]]
                ax.errorbar(point * scale, y, xerr=xerr, fmt="o", color=color, capsize=3)
            else:
                ax.plot(point * scale, y, "o", color=color if zero_line else "tab:blue")
        if zero_line:
            ax.axvline(0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(ys, labels)
        ax.set_ylim(-0.6, len(arms) - 0.4)
        ax.set_title(metric)
        ax.set_xlabel("relative lift (%)" if pct else metric)
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _plot_oracle_share(share: Mapping[str, float], path: Path) -> Path | None:
    items = [(a, v) for a, v in share.items() if v is not None and not math.isnan(v)]
    if not items:
        return None
    fig, (ax,) = _figure(1, 6.0, 0.45 * len(items) + 1.3)
    arms = [a for a, _ in items][::-1]
    vals = [v for _, v in items][::-1]
    colors = ["tab:green" if v >= 0 else "tab:red" for v in vals]
    ax.barh(arms, [v * 100 for v in vals], color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(100, color="black", lw=0.8, ls="--")
    for y, v in enumerate(vals):
        ax.annotate(
            f"{v:.0%}",
            (v * 100, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("share of oracle gain captured (%)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _plot_weights(
    per_segment: Mapping[str, Mapping[str, list[float]]], inputs: list[str], path: Path
) -> Path | None:
    """One panel per arm, one bar per segment, stacked by fusion input (grouped if any < 0)."""
    arms = [a for a, segs in per_segment.items() if segs]
    if not arms:
        return None
    fig, axes = _figure(len(arms), 4.0, 3.2)
    cmap = [
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:gray",
        "tab:olive",
        "tab:cyan",
    ]
    stacked = all(x >= 0 for segs in per_segment.values() for v in segs.values() for x in v)
    width = 0.8 / max(len(inputs), 1)
    for ax, arm in zip(axes, arms):
        segs = list(per_segment[arm])
        xs = list(range(len(segs)))
        bottom = [0.0] * len(segs)
        for j, name in enumerate(inputs):
            vals = [(per_segment[arm][s][j] if j < len(per_segment[arm][s]) else 0.0) for s in segs]
            color = cmap[j % len(cmap)]
            if stacked:  # weights on a simplex-like scale: stack them per segment
                ax.bar(xs, vals, bottom=bottom, label=name, color=color)
                bottom = [b + v for b, v in zip(bottom, vals)]
            else:  # signed weights do not stack meaningfully: group them
                offs = [x - 0.4 + width * (j + 0.5) for x in xs]
                ax.bar(offs, vals, width=width, label=name, color=color)
        if not stacked:
            ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(xs, segs)
        ax.set_title(arm)
        ax.set_ylabel("fusion weight")
        ax.tick_params(axis="x", labelrotation=30)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="input")
    return _save(fig, path)


#: Panel titles of the learning-curve scalars that have a plainer name; they come first, in
#: this order, and any other scalar follows under its own name.
SCALAR_TITLES = {
    "true_value": "probe value (true page value)",
    "reward": "reward (total)",
    "reward_post": "reward: realised value (R_post)",
    "reward_prior": "reward: prior (R_prior)",
    "reward_rule": "reward: rules",
    "kl": "KL to the reference",
    "entropy": "policy entropy",
    "loss": "loss",
    "lambda_loss": "LambdaLoss",
    "kappa_mean": "concentration κ (mean)",
}
#: Record fields that are not learning curves: the x axis, the stage, timings.
CURVE_SKIP = ("step", "epoch", "stage", "seconds", "step_ms", "requests_per_s")


@dataclass
class _CurveGroup:
    """One method's curves of one training stage: ``{scalar: (xs, ys)}`` against ``x_label``."""

    method: str
    title: str
    x_label: str
    series: dict[str, tuple[list[float], list[float]]]

    def ordered(self) -> list[tuple[str, tuple[list[float], list[float]]]]:
        first = [n for n in SCALAR_TITLES if n in self.series]
        return [(n, self.series[n]) for n in first + [n for n in self.series if n not in first]]


def _plot_curves(groups: list[_CurveGroup], path: Path) -> Path | None:
    """One titled block of panels per group (method and stage), one panel per scalar; the KL
    panel marks :data:`~blendrank.bench.summary.KL_RUNAWAY` when the curve crosses it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = [g for g in groups if g.series]
    if not groups:
        return None
    ncols = min(3, max(len(g.series) for g in groups))
    heights = [3.0 * math.ceil(len(g.series) / ncols) + 0.4 for g in groups]
    fig = Figure(figsize=(4.2 * ncols, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    subfigs = fig.subfigures(len(groups), 1, height_ratios=heights, squeeze=False).ravel()
    for sub, group in zip(subfigs, groups):
        sub.suptitle(group.title, fontweight="bold")
        axes = sub.subplots(math.ceil(len(group.series) / ncols), ncols, squeeze=False).ravel()
        for ax in axes[len(group.series):]:
            ax.set_visible(False)
        for ax, (name, (xs, ys)) in zip(axes, group.ordered()):
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
            if name == "kl" and max(ys) > KL_RUNAWAY:
                ax.axhline(KL_RUNAWAY, color="tab:red", lw=0.8, ls="--")
            ax.set_title(SCALAR_TITLES.get(name, name), fontsize=10)
            ax.set_xlabel(group.x_label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole
            ax.grid(alpha=0.3)
    return _save(fig, path)


#: Columns of the IntegratedRL-MTF per-round table (those present).
IRL_ROUND_KEYS = (
    "round",
    "transitions",
    "ab_value",
    "ab_production_value",
    "ab_lift",
    "critic_loss",
    "q_mean",
    "actor_loss",
    "bound_penalty",
)


def _irl_rounds(bench: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """IntegratedRL-MTF's per-round records (``learning_curves.integrated_rl``), if any."""
    log = (bench.get("learning_curves") or {}).get("integrated_rl")
    if not isinstance(log, Sequence) or isinstance(log, str):
        return []
    return [r for r in log if isinstance(r, Mapping) and _num(r.get("round")) is not None]


def _plot_irl(rounds: list[Mapping[str, Any]], path: Path) -> Path | None:
    """Per-round A/B value (policy vs production) and the critic loss and mean Q per step
    (``trace`` of each round; dotted lines mark where a round starts)."""
    xs = [float(r["round"]) for r in rounds]
    ab = [(_num(r.get("ab_value")), _num(r.get("ab_production_value"))) for r in rounds]
    traces = [r["trace"] for r in rounds if isinstance(r.get("trace"), Mapping)]
    if all(v is None for v, _ in ab) and not traces:
        return None
    fig, axes = _figure(3, 4.2, 3.0)
    ax = axes[0]
    for i, label in ((0, "integrated_rl"), (1, "production")):
        pts = [(x, v[i]) for x, v in zip(xs, ab) if v[i] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_title("A/B value per round")
    ax.set_xlabel("round")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for ax, name, title in ((axes[1], "critic_loss", "critic loss"), (axes[2], "q_mean", "mean Q")):
        for tr in traces:
            pts = [(_num(x), _num(y)) for x, y in zip(tr.get("step") or [], tr.get(name) or [])]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:blue")
                ax.axvline(pts[0][0], color="gray", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_xlabel("gradient step")
        ax.grid(alpha=0.3)
    if any((_num(y) or 0) > 0 for tr in traces for y in tr.get("critic_loss") or []):
        axes[1].set_yscale("log")  # the loss falls by orders of magnitude early on
    return _save(fig, path)


def _pareto(arms: Mapping[str, Mapping[str, Any]]) -> tuple[str, str] | None:
    for x, y in (("ctr", "gpm"), ("orders_per_request", "gmv_per_request"), ("ctr", "value")):
        if (
            sum(_num(m.get(x)) is not None and _num(m.get(y)) is not None for m in arms.values())
            >= 2
        ):
            return x, y
    return None


def _ci_bar(value: float, lift: Any, base: float | None) -> tuple[float, float]:
    """Error-bar half-widths (below, above) of an arm's metric from its lift CI vs the baseline
    (``base`` × (1 + lo), ``base`` × (1 + hi)); (0, 0) without one."""
    rel = _ci(lift, "rel") if isinstance(lift, Mapping) else (None, None, None)
    if base is None or rel[1] is None or rel[2] is None:
        return 0.0, 0.0
    return max(value - base * (1 + rel[1]), 0.0), max(base * (1 + rel[2]) - value, 0.0)


def _plot_pareto(arms: Mapping[str, Mapping[str, Any]], x: str, y: str, path: Path,
                 lifts: Mapping[str, Any] | None = None, baseline: str | None = None) -> Path | None:
    """Scatter of two business metrics, non-dominated arms in orange, with 95% CIs (from the
    lifts vs ``baseline``) as error bars on both axes."""
    pts = [(a, _num(m.get(x)), _num(m.get(y))) for a, m in arms.items()]
    pts = [
        (a, px, py)
        for a, px, py in pts
        if px is not None and py is not None and not (math.isnan(px) or math.isnan(py))
    ]
    if len(pts) < 2:
        return None
    front = {
        a
        for a, px, py in pts
        if not any(qx >= px and qy >= py and (qx > px or qy > py) for _, qx, qy in pts)
    }
    fig, (ax,) = _figure(1, 7.0, 5.0)
    base = arms.get(baseline or "") or {}
    bx, by = _num(base.get(x)), _num(base.get(y))
    for i, (a, px, py) in enumerate(sorted(pts, key=lambda p: (p[1], p[2]))):
        colour = "tab:orange" if a in front else "tab:blue"
        arm_lifts = (lifts or {}).get(a) or {}
        xerr, yerr = _ci_bar(px, arm_lifts.get(x), bx), _ci_bar(py, arm_lifts.get(y), by)
        ax.errorbar(px, py, xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o",
                    color=colour, ecolor=colour, elinewidth=0.8, capsize=2, zorder=3)
        # alternate label sides so neighbours do not print over each other
        ax.annotate(a, (px, py), xytext=(6, 6 if i % 2 else -12), textcoords="offset points", fontsize=8)
    fr = sorted((px, py) for a, px, py in pts if a in front)
    if len(fr) > 1:
        ax.plot([p[0] for p in fr], [p[1] for p in fr], color="tab:orange", lw=1, ls="--")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.margins(0.15)
    ax.set_title(f"Pareto view: {y} vs {x} (orange = non-dominated; bars: 95% CI)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _ope_pairs(ope: Mapping[str, Any], lifts: Mapping[str, Any]):
    """estimator -> metric -> ``[(arm, est, est_lo, est_hi, ab, ab_lo, ab_hi)]`` of the pairs
    with both an estimate and an A/B lift."""
    mapping = ope.get("metric_map")
    out: dict[str, dict[str, list[tuple]]] = {}
    for est, per_arm in (ope.get("estimates") or {}).items():
        for arm, per_metric in per_arm.items():
            for m, e in per_metric.items():
                t_name = mapping.get(m) if mapping else m
                t = (lifts.get(arm) or {}).get(t_name) if t_name else None
                if not isinstance(t, Mapping) or not isinstance(e, Mapping):
                    continue
                pe, pt = _ci(e, "rel"), _ci(t, "rel")
                if pe[0] is None or pt[0] is None:
                    continue
                out.setdefault(est, {}).setdefault(m, []).append((arm, *pe, *pt))
    return out


def _plot_ope_vs_ab(pairs: Mapping[str, Mapping[str, list[tuple]]], recommended: str | None,
                    path: Path) -> Path | None:
    """One panel per estimator: estimated lift vs simulated A/B lift, both with 95% CIs, one
    colour per metric, the diagonal y = x."""
    ests = [e for e in pairs if pairs[e]]
    if not ests:
        return None
    fig, axes = _figure(len(ests), 4.2, 4.0)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan"]
    for ax, est in zip(axes, ests):
        lo_all, hi_all = [], []
        for m, rows in pairs[est].items():
            c = colors.setdefault(m, palette[len(colors) % len(palette)])
            for _, pe, le, he, pt, lt, ht in rows:
                xerr = [[max(pt - (lt if lt is not None else pt), 0) * 100],
                        [max((ht if ht is not None else pt) - pt, 0) * 100]]
                yerr = [[max(pe - (le if le is not None else pe), 0) * 100],
                        [max((he if he is not None else pe) - pe, 0) * 100]]
                ax.errorbar(pt * 100, pe * 100, xerr=xerr, yerr=yerr, fmt="o", color=c, ms=4,
                            capsize=2, lw=0.8, label=m)
                lo_all += [pt * 100, pe * 100]
                hi_all += [pt * 100, pe * 100]
        span = [min(lo_all), max(hi_all)]
        ax.plot(span, span, color="black", lw=0.8, ls="--")
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_title(f"{est} (recommended)" if est == recommended else est)
        ax.set_xlabel("simulated A/B lift (%)")
        ax.set_ylabel("off-policy estimate (%)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    return _save(fig, path)


def _ope_sections(bench: Mapping[str, Any], plots: Path) -> list[_Section]:
    ope = bench.get("ope") or {}
    if not ope.get("estimates") and not ope.get("skipped"):
        return []
    exam = (ope.get("examination") or {}).get("source", "")
    skipped = "; ".join(f"`{k}`: {v}" for k, v in {**(ope.get("skipped") or {}),
                                                   **(ope.get("arms_skipped") or {})}.items())
    notes = [f"Lift vs production estimated from {ope.get('n_logged_requests', 'the')} logged "
             f"requests only (docs/ope.md), with 95% paired-bootstrap CIs. Examination: {exam}."]
    if skipped:
        notes.append(f"Not estimated: {skipped}.")
    if validation := ope.get("validation") or {}:
        sec = _Section("Off-policy estimates vs the simulated A/B", notes + [
            f"Recommended: `{ope.get('recommended')}` ({ope.get('recommendation_rule', '')}). "
            "Coverage: share of (arm, metric) pairs whose estimate CI covers the A/B lift; sign: "
            "agreement over the pairs whose A/B CI excludes 0; Spearman: of the arms' order on value."])
        keys = ["coverage", "sign_agreement", "n_sign_pairs", "spearman", "bias", "mean_abs_error",
                "n_pairs"]
        rows = [[f"{e} (recommended)" if e == ope.get("recommended") else e]
                + [_fmt(v.get(k)) for k in keys] for e, v in validation.items()]
        sec.tables.append(_Table(["estimator", *keys], rows))
        pairs = _ope_pairs(ope, bench.get("lifts") or {})
        if p := _plot_ope_vs_ab(pairs, ope.get("recommended"), plots / "ope_vs_ab.png"):
            sec.images.append(("Off-policy estimate vs simulated A/B lift (95% CIs both ways)", p))
    else:
        sec = _Section("Off-policy estimates of the lift vs production", notes + [
            "No A/B truth on logs: which estimator to trust is what the world benches validate "
            "(docs/ope.md)."])
    metrics = _ordered_metrics([pm for per_arm in (ope.get("estimates") or {}).values()
                                for pm in per_arm.values()], numeric=False)
    rows = []
    for est, per_arm in (ope.get("estimates") or {}).items():
        for arm, per_metric in per_arm.items():
            rows.append([est, arm] + [_fmt_ci(*_ci(per_metric.get(m), "rel"), pct=True)
                                      if per_metric.get(m) is not None else "–" for m in metrics])
    if rows:
        sec.tables.append(_Table(["estimator", "arm", *metrics], rows, align_left=2))
    return [sec]


# ----------------------------------------------------------------------------- sections


def _arms_table(arms: Mapping[str, Mapping[str, Any]], baseline: str | None) -> _Table:
    metrics = _ordered_metrics(arms.values())
    metrics = [m for m in metrics if any(_num(a.get(m)) is not None for a in arms.values())]
    rows = []
    for arm, vals in arms.items():
        label = f"{arm} (baseline)" if arm == baseline else arm
        rows.append([label] + [_fmt(vals.get(m)) for m in metrics])
    return _Table(["arm", *metrics], rows)


def _ci_section_data(section: Mapping[str, Any], point_key: str):
    data: dict[str, dict[str, tuple[float | None, float | None, float | None]]] = {}
    for arm, per_metric in section.items():
        if isinstance(per_metric, Mapping):
            data[arm] = {m: _ci(e, point_key) for m, e in per_metric.items()}
    metrics = _ordered_metrics(
        [v for v in section.values() if isinstance(v, Mapping)], numeric=False
    )
    return data, metrics


def _ci_table(data, metrics: list[str], arms: list[str], pct: bool) -> _Table:
    rows = [
        [arm] + [_fmt_ci(*data[arm].get(m, (None, None, None)), pct=pct) for m in metrics]
        for arm in arms
        if arm in data
    ]
    return _Table(["arm", *metrics], rows)


def _weights(bench: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    w = bench.get("weights") or {}
    per_segment = w.get("per_segment") if isinstance(w, Mapping) else None
    if not isinstance(per_segment, Mapping):
        return [], {}
    names = w.get("fusion_inputs")
    inputs = [str(x) for x in names] if isinstance(names, list) else []
    out: dict[str, dict[str, list[float]]] = {}
    for arm, segs in per_segment.items():
        if not isinstance(segs, Mapping):
            continue
        out[arm] = {}
        for seg, vec in segs.items():
            if isinstance(vec, Mapping):  # {input: weight}
                for name in vec:
                    if str(name) not in inputs:
                        inputs.append(str(name))
                out[arm][str(seg)] = [_num(vec.get(n)) or 0.0 for n in inputs]
            elif isinstance(vec, Sequence) and not isinstance(vec, str):
                out[arm][str(seg)] = [_num(x) or 0.0 for x in vec]
    width = max((len(v) for segs in out.values() for v in segs.values()), default=0)
    inputs += [f"w{i}" for i in range(len(inputs), width)]
    return inputs[:width], {a: s for a, s in out.items() if s}


def _curves(bench: Mapping[str, Any]) -> list[_CurveGroup]:
    """One :class:`_CurveGroup` per method and training stage, from a list of records (each
    with ``step`` or ``epoch`` and, for staged trainers, ``stage``) or a dict of lists."""
    raw = bench.get("learning_curves") or {}
    out: list[_CurveGroup] = []
    for method, log in raw.items():
        if isinstance(log, Mapping):  # {"step": [...], "reward": [...]}
            series: dict[str, tuple[list[float], list[float]]] = {}
            steps = log.get("step")
            for name, vals in log.items():
                if name in CURVE_SKIP or not isinstance(vals, Sequence) or isinstance(vals, str):
                    continue
                xs = (
                    list(steps)
                    if isinstance(steps, Sequence) and len(steps) == len(vals)
                    else list(range(len(vals)))
                )
                pts = [(_num(x), _num(v)) for x, v in zip(xs, vals)]
                pts = [(x, v) for x, v in pts if x is not None and v is not None]
                if pts:
                    series[name] = ([p[0] for p in pts], [p[1] for p in pts])
            if series:
                out.append(_CurveGroup(str(method), str(method), "step", series))
        elif isinstance(log, Sequence) and not isinstance(log, str):
            records = [r for r in log if isinstance(r, Mapping)]
            for stage in dict.fromkeys(r.get("stage") for r in records):
                recs = [r for r in records if r.get("stage") == stage]
                x_key = "step" if any("step" in r for r in recs) else (
                    "epoch" if any("epoch" in r for r in recs) else None)
                series = {}
                for i, rec in enumerate(recs):
                    x = _num(rec.get(x_key)) if x_key else None
                    x = float(i) if x is None else x
                    for name, v in rec.items():
                        if name in CURVE_SKIP or _num(v) is None:
                            continue
                        xs, ys = series.setdefault(name, ([], []))
                        xs.append(x)
                        ys.append(float(v))
                if not series:
                    continue
                title = str(method) if stage is None else f"{method}: Stage {stage}"
                if x_key:
                    title += f" (per {x_key})"
                out.append(_CurveGroup(str(method), title, x_key or "record", series))
    return out


def _header(bench: Mapping[str, Any]) -> _Section:
    if is_log_bench(bench):
        return _log_header(bench)
    keys = [k for k in HEADER_ORDER if k in bench]
    keys += [
        k
        for k, v in bench.items()
        if k not in keys and (v is None or isinstance(v, (str, int, float, bool)))
    ]
    rows = [[k, _fmt(bench[k]) if _num(bench[k]) is not None else str(bench[k])] for k in keys]
    sec = _Section("Run")
    if rows:
        sec.tables.append(_Table(["field", "value"], rows, align_left=2))
    sec.notes.append("**Metric conventions.** " + CONVENTIONS)
    return sec


def _standing_text(arm: str, rel: float, lo: float | None, hi: float | None) -> str:
    return f"`{arm}` {_fmt_ci(rel, lo, hi, pct=True)}"


def _drift_flags(bench: Mapping[str, Any]) -> list[str]:
    """One paragraph per training run flagged by :func:`~blendrank.bench.summary.kl_runaway`."""
    return [
        f"**Flag: `{f.method}`.** Its KL to the reference reached {f.final_kl:.3g} (above "
        f"{KL_RUNAWAY:g}) while its probe value did not rise ({f.first_value:.4g} at the first "
        f"logged step, {f.last_value:.4g} at the last): Stage 2 moved away from the reference "
        "without a gain the world measures. A larger `stage2.beta` (the KL coefficient) or fewer "
        "`stage2.steps` keep it closer."
        for f in kl_runaway(bench.get("learning_curves") or {})
    ]


def _summary(bench: Mapping[str, Any], run: Mapping[str, Any] | None) -> _Section:
    """The headline: what won on the value metric and by how much (lift vs the baseline with
    its 95% CI), the ceilings, flagged training runs, and which blendrank wrote what when."""
    sec = _Section("Summary")
    metric = str(bench.get("value_metric") or "value")
    baseline = str(bench.get("baseline_arm") or "the baseline")
    standings = value_standings(bench)
    share = {a: _num(v) for a, v in (bench.get("oracle_share") or {}).items()}
    if standings:
        best = standings[0]
        lift = _standing_text(best.arm, best.rel, best.lo, best.hi)
        if best.verdict == "above":
            text = f"**`{best.arm}` wins on `{metric}`**: {lift} vs `{baseline}` (95% CI above 0)."
        elif best.verdict == "level":
            text = (f"**No method is distinguishable from `{baseline}` on `{metric}`**: the "
                    f"highest is {lift}, whose 95% CI covers 0.")
        else:
            text = (f"**Every method compared is below `{baseline}` on `{metric}`**; the best is "
                    f"{lift}.")
        if (s := share.get(best.arm)) is not None and not math.isnan(s):
            text += f" It captures {s:.0%} of the oracle's gain over `{baseline}`."
        if len(standings) > 1:
            second = standings[1]
            text += f" Next: {_standing_text(second.arm, second.rel, second.lo, second.hi)}"
            overlap = (best.lo is not None and second.hi is not None and best.lo <= second.hi)
            text += " (the two CIs overlap)." if overlap else "."
        sec.paragraphs.append(text)
        rows = [
            [st.arm, _fmt_ci(st.rel, st.lo, st.hi, pct=True), st.verdict,
             "–" if (v := share.get(st.arm)) is None or math.isnan(v) else f"{v:.1%}"]
            for st in standings
        ]
        sec.tables.append(_Table(
            ["arm", f"{metric} lift vs {baseline} [95% CI]", f"vs {baseline}", "oracle share"], rows))
        lifts = bench.get("lifts") or {}
        ceilings = [
            _standing_text(a, *_ci(lifts[a].get(metric), "rel"))
            for a in CEILING_ARMS
            if isinstance(lifts.get(a), Mapping) and _ci(lifts[a].get(metric), "rel")[0] is not None
        ]
        if ceilings:
            sec.paragraphs.append(
                "Ceilings, which read the world's truth and are not candidates: "
                + ", ".join(ceilings) + "."
            )
    sec.paragraphs += _drift_flags(bench)
    made = f"Report written by blendrank {__version__} on {datetime.now(UTC).date().isoformat()}."
    if run:
        made += f" The bench ran blendrank {run.get('blendrank_version', '?')}"
        if isinstance(stamp := run.get("timestamp"), str):
            made += f" on {stamp[:10]}"
        if isinstance(git := run.get("git"), Mapping) and isinstance(git.get("commit"), str):
            made += f" (commit {git['commit'][:12]}{', with local changes' if git.get('dirty') else ''})"
        made += "."
    sec.notes.append(made)
    return sec


def _segment_lifts(bench: Mapping[str, Any], seg_lifts: Mapping[str, Any], plots: Path) -> _Section:
    """Value lift vs the baseline within each user segment: a table (arm x segment) and one CI
    panel per segment."""
    metric = str(bench.get("value_metric") or "value")
    baseline = bench.get("baseline_arm") or "baseline"
    segments = [str(s) for s, arms in seg_lifts.items() if isinstance(arms, Mapping)]
    data: dict[str, dict[str, tuple[float | None, float | None, float | None]]] = {}
    for seg, arms in seg_lifts.items():
        if not isinstance(arms, Mapping):
            continue
        for arm, entry in arms.items():
            if isinstance(entry, Mapping):
                data.setdefault(str(arm), {})[str(seg)] = _ci(entry.get(metric, entry.get("value")), "rel")
    order = [a for a in _arm_order(bench, data) if a in data]
    sec = _Section(
        "Lifts per user segment",
        [f"Relative lift of `{metric}` vs `{baseline}` within each user segment, with 95% "
         "paired-bootstrap CI over that segment's requests, as `lift [lo, hi]`."],
    )
    sec.tables.append(_ci_table(data, segments, order, pct=True))
    if p := _plot_ci_panels(data, segments, order, plots / "segment_lifts.png", pct=True,
                            zero_line=True):
        sec.images.append((f"{metric} lift per user segment", p))
    return sec


def _build(bench: Mapping[str, Any], plots: Path, run: Mapping[str, Any] | None = None) -> list[_Section]:
    if is_log_bench(bench):
        return _build_logs(bench, plots)
    sections = [_summary(bench, run), _header(bench)]
    baseline = bench.get("baseline_arm")
    arms = bench.get("arms") or {}

    if arms:
        sec = _Section(
            "Arms: expected metrics",
            ["Computed under the world's true probabilities for the shown page."],
        )
        sec.tables.append(_arms_table(arms, baseline))
        axes = _pareto(arms)
        if axes and (p := _plot_pareto(arms, *axes, plots / "pareto.png", bench.get("lifts"), baseline)):
            sec.images.append((f"Pareto view ({axes[1]} vs {axes[0]})", p))
        sections.append(sec)
    if realised := bench.get("arms_realised") or {}:
        sec = _Section(
            "Arms: realised metrics", ["Sampled outcomes, as a real A/B test would see them."]
        )
        sec.tables.append(_arms_table(realised, baseline))
        sections.append(sec)

    for key, title, ref, fname in (
        ("lifts", "Lifts vs baseline", baseline or "baseline", "lifts.png"),
        ("lifts_vs_static", "Lifts vs static_search", "static_search", "lifts_vs_static.png"),
    ):
        section = bench.get(key) or {}
        if not section:
            continue
        data, metrics = _ci_section_data(section, "rel")
        order = [a for a in _arm_order(bench, section) if a in data]
        sec = _Section(
            f"{title} ({ref})" if key == "lifts" else title,
            [
                (
                    f"Relative lift vs `{ref}` with 95% paired-bootstrap CI, as `lift [lo, hi]`. "
                    "Green: CI above 0; red: CI below 0; grey: CI covers 0 or is missing."
                )
            ],
        )
        sec.tables.append(_ci_table(data, metrics, order, pct=True))
        twins = same_lifts({a: data[a] for a in order}, metrics)
        drawn = [m for m in metrics if m not in twins]
        if p := _plot_ci_panels(data, drawn, order, plots / fname, pct=True, zero_line=True):
            sec.images.append((title, p))
        if twins:
            sec.notes.append(
                "Drawn once: "
                + "; ".join(f"`{m}` has the same lifts as `{k}`" for m, k in twins.items())
                + " (one is a fixed multiple of the other)."
            )
        sections.append(sec)

    if sessions := bench.get("sessions") or {}:
        sec = _Section(
            "Session A/B",
            [
                f"{sessions.get('n_sessions', '?')} whole sessions per arm, same users and common random "
                "numbers; page value in expectation, session length realised. Lifts vs production with "
                "95% paired-bootstrap CIs over sessions."
            ],
        )
        sec.tables.append(_arms_table(sessions.get("arms") or {}, baseline))
        data, metrics = _ci_section_data(sessions.get("lifts") or {}, "rel")
        sec.tables.append(_ci_table(data, metrics, list(data), pct=True))
        sections.append(sec)

    if share := bench.get("oracle_share") or {}:
        vals = {a: _num(v) for a, v in share.items()}
        sec = _Section(
            "Share of oracle gain",
            [
                (
                    "(arm - production) / (oracle - production) on the business value "
                    f"(`{bench.get('value_metric', 'value')}`); 100% = oracle."
                )
            ],
        )
        sec.tables.append(
            _Table(
                ["arm", "oracle share"],
                [
                    [a, "–" if v is None else ("nan" if math.isnan(v) else f"{v:.1%}")]
                    for a, v in vals.items()
                ],
            )
        )
        if p := _plot_oracle_share(
            {a: v for a, v in vals.items() if v is not None}, plots / "oracle_share.png"
        ):
            sec.images.append(("Share of oracle gain", p))
        sections.append(sec)

    inputs, per_segment = _weights(bench)
    if per_segment:
        sec = _Section(
            "Fusion weights per user segment",
            [f"Mean fusion weight per segment; inputs: {', '.join(inputs) or 'unnamed'}."],
        )
        rows = [
            [arm, seg] + [_fmt(x) for x in vec] + [""] * (len(inputs) - len(vec))
            for arm, segs in per_segment.items()
            for seg, vec in segs.items()
        ]
        sec.tables.append(_Table(["arm", "segment", *inputs], rows, align_left=2))
        if p := _plot_weights(per_segment, inputs, plots / "weights.png"):
            sec.images.append(("Fusion weights per segment", p))
        if not bench.get("lifts_per_segment"):
            sec.notes.append(
                "This bench.json has no per-segment lifts (`lifts_per_segment`); the weights "
                "above are what it records per segment."
            )
        sections.append(sec)
    if seg_lifts := bench.get("lifts_per_segment") or {}:
        sections.append(_segment_lifts(bench, seg_lifts, plots))

    if rounds := _irl_rounds(bench):
        sec = _Section(
            "IntegratedRL-MTF rounds",
            [
                "One row per training round (progressive rounds in a world; one offline round on "
                "logs). A/B value of the deterministic policy and of production: in the "
                "marketplace world, the expected page value on held-out requests at session step "
                "0; in kuairand-sim, the realised value per held-out session; on logs, the "
                "objective-weighted NDCG@k on the validation split. Critic loss and Q: mean over "
                "the last fifth of each round in the table, every step window in the plot."
            ],
        )
        keys = [k for k in IRL_ROUND_KEYS if any(k in r for r in rounds)]
        rows = [
            [_pct(_num(r.get(k))) if k == "ab_lift" else _fmt(r.get(k)) for k in keys]
            for r in rounds
        ]
        sec.tables.append(_Table(keys, rows))
        if p := _plot_irl(rounds, plots / "integrated_rl.png"):
            sec.images.append(("IntegratedRL-MTF: A/B value per round, critic loss and Q", p))
        sections.append(sec)

    # IntegratedRL's round records have their own section above.
    curves = [g for g in _curves(bench) if not (g.method == "integrated_rl" and rounds)]
    if curves:
        sec = _Section(
            "Learning curves",
            [
                "One block per method and training stage (GRADE: Stage 1 per epoch, Stage 2 per "
                "optimiser step), one panel per logged scalar. `true_value`, where logged, is the "
                "probe: the world's true mean page value of the policy's mean weights on "
                "validation requests."
            ],
        )
        sec.paragraphs += _drift_flags(bench)
        rows = [
            [g.title, name, _fmt(len(ys)), _fmt(ys[0]), _fmt(ys[-1])]
            for g in curves
            for name, (_, ys) in g.ordered()
        ]
        sec.tables.append(
            _Table(["run", "scalar", "points", "first", "last"], rows, align_left=2)
        )
        if p := _plot_curves(curves, plots / "learning_curves.png"):
            sec.images.append(("Learning curves", p))
        sections.append(sec)

    if offline := bench.get("offline") or {}:
        data, metrics = _ci_section_data(offline, "mean")
        order = list(data)
        sec = _Section(
            "Offline metrics on logs",
            ["Mean over test requests with 95% bootstrap CI, as `mean [lo, hi]`."],
        )
        sec.tables.append(_ci_table(data, metrics, order, pct=False))
        if p := _plot_ci_panels(
            data, metrics, order, plots / "offline.png", pct=False, zero_line=False
        ):
            sec.images.append(("Offline metrics", p))
        sections.append(sec)
    return sections + _closing(bench, plots)


def _closing(bench: Mapping[str, Any], plots: Path) -> list[_Section]:
    """The sections every report ends with: the off-policy estimates and the timings."""
    timings = _timings(bench)
    return _ope_sections(bench, plots) + ([timings] if timings else [])


def _timings(bench: Mapping[str, Any]) -> _Section | None:
    if not (timings := bench.get("timings_s") or {}):
        return None
    rows = [[k, _fmt_seconds(v)] for k, v in timings.items()]
    total = sum(x for v in timings.values() if (x := _num(v)) is not None and not math.isnan(x))
    rows.append(["total", _fmt_seconds(total)])
    return _Section("Timings", tables=[_Table(["stage", "seconds"], rows)])


def _fmt_seconds(v: Any) -> str:
    x = _num(v)
    return "–" if x is None else f"{x:,.2f}"


# ----------------------------------------------------------------------------- rendering


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _render_md(sections: list[_Section], title: str, root: Path) -> str:
    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for p in sec.paragraphs:
            lines += [p, ""]
        for t in sec.tables:
            lines.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            lines.append(
                "|"
                + "|".join(":---" if i < t.align_left else "---:" for i in range(len(t.headers)))
                + "|"
            )
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        for caption, path in sec.images:
            lines += [f"![{caption}]({path.relative_to(root).as_posix()})", ""]
        for p in sec.notes:
            lines += [p, ""]
    return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}
h1{border-bottom:2px solid #ddd}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 8px}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:0.8em 0}code{background:#f3f3f3;padding:0 3px}
"""


def _inline_md(s: str) -> str:
    """Escape, then render the inline Markdown the report uses: `code`, **bold**, *em*."""
    out = html.escape(s)
    for mark, tag in (("`", "code"), ("**", "strong"), ("*", "em")):
        parts = out.split(mark)
        if len(parts) % 2 == 1:  # only balanced markers
            out = "".join(f"<{tag}>{p}</{tag}>" if i % 2 else p for i, p in enumerate(parts))
    return out


def _render_html(sections: list[_Section], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        out += [f"<p>{_inline_md(p)}</p>" for p in sec.paragraphs]
        for t in sec.tables:
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
                + "</tr></thead><tbody>"
            )
            for row in t.rows:
                cells = "".join(
                    f"<td>{html.escape(c)}</td>"
                    if i < t.align_left
                    else f'<td class="num">{html.escape(c)}</td>'
                    for i, c in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        for caption, path in sec.images:
            b64 = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        out += [f"<p>{_inline_md(p)}</p>" for p in sec.notes]
    out.append("</body></html>")
    return "\n".join(out)


def _title(bench: Mapping[str, Any]) -> str:
    if is_log_bench(bench):
        data = bench.get("data")
        name = f" ({Path(str(data)).name})" if data else ""
        return f"blendrank bench report: offline on a log{name}"
    what = bench.get("world") or ("logs" if bench.get("offline") else None)
    parts = [str(x) for x in (what, bench.get("config")) if x]
    return "blendrank bench report" + (f": {' / '.join(parts)}" if parts else "")


def _run_record(directory: Path) -> dict[str, Any] | None:
    """``run.json`` beside bench.json (``blendrank bench`` writes it), or None when it is absent
    or unreadable: it only adds provenance to the summary."""
    try:
        record = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_report(
    bench_dir: Path | str, bench: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``bench_dir``.

    ``bench`` defaults to :func:`load_bench` of the directory. Returns ``(md_path, html_path)``.
    """
    directory, _ = _bench_path(Path(bench_dir))
    if bench is None:
        bench = load_bench(directory)
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - matplotlib is an optional extra
        raise BlendrankError(
            "the report needs matplotlib; install it with `pip install 'blendrank[report]'`"
        ) from exc
    plots = directory / PLOTS_DIR
    try:
        plots.mkdir(parents=True, exist_ok=True)
        for stale in plots.glob("*.png"):  # plots of sections that are gone must not linger
            stale.unlink()
        sections = _build(bench, plots, _run_record(directory))
        title = _title(bench)
        md_path, html_path = directory / REPORT_MD, directory / REPORT_HTML
        md_path.write_text(_render_md(sections, title, directory), encoding="utf-8")
        html_path.write_text(_render_html(sections, title), encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"{directory}: cannot write the report ({exc}); check the directory's "
            "permissions and free space"
        ) from exc
    return md_path, html_path


# ----------------------------------------------------------------------------- terminal table


def format_table(bench: Mapping[str, Any]) -> Table:
    """Rich table for the terminal: arms x key metrics, value lift with CI, oracle share.

    For a log bench it shows the page value with its CI and lift, its terms and the composite
    NDCG instead (:func:`_log_table`).
    """
    if is_log_bench(bench):
        return _log_table(bench)
    arms = bench.get("arms") or bench.get("arms_realised") or {}
    baseline = bench.get("baseline_arm")

    value_metric = str(bench.get("value_metric") or "value")
    present = [m for m in _ordered_metrics(arms.values()) if m in KEY_METRICS or m == value_metric]
    present = [m for m in present if any(_num(a.get(m)) is not None for a in arms.values())]
    lifts = bench.get("lifts") or {}
    share = bench.get("oracle_share") or {}
    kind = "expected" if bench.get("arms") else "realised"
    where = " / ".join(str(x) for x in (bench.get("world"), bench.get("config")) if x)
    show_lift = any(isinstance(v, Mapping) and value_metric in v for v in lifts.values())
    caption = []
    if baseline:
        caption.append(f"* baseline = {baseline}")
    if show_lift:
        caption.append(f"{value_metric} lift: relative to baseline, [95% CI]")
    table = Table(
        title=f"Arms ({kind}){' — ' + where if where else ''}",
        caption="; ".join(caption) or None,
        box=box.SIMPLE_HEAD,
    )
    table.add_column("arm", style="bold", no_wrap=True)
    for m in present:
        table.add_column(m, justify="right")
    if show_lift:
        table.add_column(f"{value_metric} lift", justify="right")
    if share:
        table.add_column("oracle share", justify="right")
    for arm, vals in arms.items():
        row = [f"{arm} *" if arm == baseline else arm] + [_fmt(vals.get(m)) for m in present]
        if show_lift:
            per_arm = lifts.get(arm)
            entry = per_arm.get(value_metric) if isinstance(per_arm, Mapping) else None
            point, lo, hi = _ci(entry, "rel")
            cell = _fmt_ci(point, lo, hi, pct=True, digits=1)
            if point is not None and lo is not None and hi is not None:
                cell = f"[green]{cell}[/]" if lo > 0 else f"[red]{cell}[/]" if hi < 0 else cell
            row.append(cell)
        if share:
            v = _num(share.get(arm))
            row.append("–" if v is None else ("nan" if math.isnan(v) else f"{v:.1%}"))
        table.add_row(*row)
    return table


# ----------------------------------------------------------------------------- log benches


def _log_metric_groups(bench: Mapping[str, Any], metrics: list[str]) -> tuple[list[str], list[str]]:
    """(the page value and its terms, the ranking metrics) among ``metrics``, in that order."""
    page_value = str(bench.get("page_value_metric") or "")
    terms = [str(t) for t in (bench.get("realised_terms") or {})]
    value = [m for m in (page_value, *terms) if m in metrics]
    value += [m for m in metrics if m.startswith("value@") and m not in value]
    return value, [m for m in metrics if m not in value]


def _describe_objective(objective: Mapping[str, Any]) -> str:
    value = objective.get("value") or {}
    terms = (
        " + ".join(f"{_fmt(v)}·{t}" for t, v in value.items())
        if isinstance(value, Mapping)
        else "?"
    )
    discount, page = objective.get("discount", "log2"), objective.get("page_size", "?")
    text = f"value = Σ_pos d(pos)·({terms}), d = {discount}, first {page} positions"
    if isinstance(prod := objective.get("production_weights"), Mapping) and prod:
        text += "; production fuses " + ", ".join(f"{k} {_fmt(w)}" for k, w in prod.items())
    if isinstance(rails := objective.get("guardrails"), Mapping) and rails:
        text += "; guard rails " + ", ".join(f"{m} ≥ −{_num(t) or 0:.2%}" for m, t in rails.items())
    return text


def _log_header(bench: Mapping[str, Any]) -> _Section:
    sec = _Section("Run")
    test = bench.get("test_split") or "the test split"
    n = bench.get("n_eval_requests")
    sec.paragraphs.append(
        f"Offline bench on a log: every arm re-ranks the logged candidates of {test}"
        + (f" ({_fmt(n)} requests)" if _num(n) is not None else "")
        + " and is measured with the labels the log recorded. No world: no simulated A/B and no "
        "oracle; lifts are against `production`, the objective's hand-set fusion of the same "
        "predictions"
        + (
            ", and `logged` is the order the log showed."
            if "logged" in (bench.get("offline") or {})
            else "."
        )
    )
    if isinstance(objective := bench.get("objective"), Mapping):
        source = bench.get("objective_source") or "not recorded"
        lead = "**Default objective.**" if bench.get("objective_default") else "**Objective.**"
        sec.paragraphs.append(f"{lead} {_describe_objective(objective)} (from {source}).")
    rows = []
    for key in (
        "data",
        "mapping",
        "test_split",
        "n_eval_requests",
        "split_requests",
        "seed",
        "baseline_arm",
        "page_value_metric",
        "value_metric",
        "ci_method",
    ):
        v = bench.get(key)
        if isinstance(v, Mapping):
            v = ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
        if v is not None:
            rows.append([key, _fmt(v) if _num(v) is not None else str(v)])
    if rows:
        sec.tables.append(_Table(["field", "value"], rows, align_left=2))
    notes = [str(x) for x in bench.get("notes") or []] + [
        f"GRADE: {x}" for x in bench.get("grade_notes") or []
    ]
    sec.notes += [f"**Note.** {x}" for x in notes]
    sec.notes.append("**What was measured.** " + LOG_CONVENTIONS)
    return sec


def _build_logs(bench: Mapping[str, Any], plots: Path) -> list[_Section]:
    """The sections of a log bench's report (``bench --data``)."""
    sections = [_log_header(bench)]
    offline = bench.get("offline") or {}
    data, metrics = _ci_section_data(offline, "mean")
    order = [a for a in _arm_order(bench, offline) if a in data]
    value_metrics, ranking = _log_metric_groups(bench, metrics)
    for names, title, text, fname in (
        (
            value_metrics,
            "Page value on the test split",
            "Mean per test request of the objective's realised value of each arm's page and of "
            "each of its terms, from the logged labels, with 95% bootstrap CI as `mean [lo, hi]`.",
            "page_value.png",
        ),
        (
            ranking,
            "Ranking metrics on the test split",
            "Per-objective NDCG and GAUC of each arm's ranking of the logged candidates and the "
            "composite NDCG, means over test requests with 95% bootstrap CI as `mean [lo, hi]`.",
            "offline.png",
        ),
    ):
        if not names:
            continue
        sec = _Section(title, [text])
        sec.tables.append(_ci_table(data, names, order, pct=False))
        if p := _plot_ci_panels(data, names, order, plots / fname, pct=False, zero_line=False):
            sec.images.append((title, p))
        sections.append(sec)

    for key, ref, fname in (
        ("lifts", bench.get("baseline_arm") or "production", "lifts.png"),
        ("lifts_vs_static", "static_search", "lifts_vs_static.png"),
    ):
        if not (section := bench.get(key) or {}):
            continue
        lift_data, lift_metrics = _ci_section_data(section, "rel")
        value_first = sum(_log_metric_groups(bench, lift_metrics), [])
        arms = [a for a in _arm_order(bench, section) if a in lift_data]
        sec = _Section(
            f"Lifts vs {ref} on the test split",
            [
                f"Relative lift vs `{ref}` on the same test requests with 95% paired-bootstrap "
                "CI, as `lift [lo, hi]` (a metric whose baseline total is 0 has no lift). Green: "
                "CI above 0; red: CI below 0; grey: CI covers 0."
            ],
        )
        sec.tables.append(_ci_table(lift_data, value_first, arms, pct=True))
        if p := _plot_ci_panels(
            lift_data, value_first, arms, plots / fname, pct=True, zero_line=True
        ):
            sec.images.append((f"Lifts vs {ref}", p))
        sections.append(sec)

    weights = bench.get("weights") or {}
    if (
        isinstance(glob := weights.get("global") if isinstance(weights, Mapping) else None, Mapping)
        and glob
    ):
        inputs = [str(x) for x in weights.get("fusion_inputs") or []]
        width = max((len(v) for v in glob.values() if isinstance(v, Sequence)), default=0)
        inputs += [f"w{i}" for i in range(len(inputs), width)]
        rows = [
            [arm] + [_fmt(x) for x in vec] for arm, vec in glob.items() if isinstance(vec, Sequence)
        ]
        sections.append(
            _Section(
                "Fusion weights",
                [
                    "Mean fusion weight over the test requests (per-request methods vary by "
                    "request; integrated_rl: its powers, normalised). `logged` is an order, not "
                    "a fusion, and has none."
                ],
                [_Table(["arm", *inputs[:width]], rows)],
            )
        )

    if rounds := _irl_rounds(bench):
        sec = _Section(
            "IntegratedRL-MTF on the log",
            [
                "One offline round on the train split's logged requests (no exploration, no A/B): "
                "`ab_value` and `ab_production_value` are the objective-weighted NDCG@k of the "
                "policy and of production on the validation split. Critic loss and Q: mean over "
                "the last fifth of the round in the table, every step window in the plot."
            ],
        )
        sec.paragraphs += [f"**Note.** {r['note']}" for r in rounds if r.get("note")]
        keys = [
            k
            for k in (*IRL_ROUND_KEYS, "requests", "sessions", "mean_session_length")
            if any(k in r for r in rounds)
        ]
        sec.tables.append(
            _Table(
                keys,
                [
                    [_pct(_num(r.get(k))) if k == "ab_lift" else _fmt(r.get(k)) for k in keys]
                    for r in rounds
                ],
            )
        )
        if p := _plot_irl(rounds, plots / "integrated_rl.png"):
            sec.images.append(("IntegratedRL-MTF: value per round, critic loss and Q", p))
        sections.append(sec)
    if curves := [g for g in _curves(bench) if not (g.method == "integrated_rl" and rounds)]:
        sec = _Section("Learning curves")
        sec.tables.append(
            _Table(
                ["run", "scalar", "points", "first", "last"],
                [[g.title, name, _fmt(len(ys)), _fmt(ys[0]), _fmt(ys[-1])] for g in curves for name, (_, ys) in g.ordered()],
                align_left=2,
            )
        )
        if p := _plot_curves(curves, plots / "learning_curves.png"):
            sec.images.append(("Learning curves", p))
        sections.append(sec)
    return sections + _closing(bench, plots)


def _log_table(bench: Mapping[str, Any]) -> Table:
    """The terminal table of a log bench: page value with CI and lift, its terms, ranking."""
    data, metrics = _ci_section_data(bench.get("offline") or {}, "mean")
    value_metrics, ranking = _log_metric_groups(bench, metrics)
    composite = [m for m in ranking if m.startswith("composite")]
    shown = value_metrics[:1] + composite + value_metrics[1:]
    with_ci = 1 + len(composite) if value_metrics else len(composite)
    if not shown:  # an older or hand-written bench.json: its ranking metrics, all with CIs
        shown, with_ci = ranking, len(ranking)
    lifts = bench.get("lifts") or {}
    baseline = bench.get("baseline_arm") or "production"
    lift_of = value_metrics[0] if value_metrics else (composite[0] if composite else None)
    name = Path(str(bench.get("data") or "")).name
    table = Table(
        title=f"Offline on the test split{' of ' + name if name else ''} (mean [95% CI])",
        caption=f"* baseline = {baseline}; lift: relative to the baseline, [95% CI]",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("arm", style="bold", no_wrap=True)
    for i, m in enumerate(shown):
        table.add_column(m, justify="right")
        if i == 0 and lift_of:
            table.add_column(f"{lift_of} lift", justify="right")
    for arm in [a for a in _arm_order(bench, data) if a in data]:
        row = [f"{arm} *" if arm == baseline else arm]
        for i, m in enumerate(shown):
            point, lo, hi = data[arm].get(m, (None, None, None))
            row.append(_fmt_ci(point, lo, hi, pct=False) if i < with_ci else _fmt(point))
            if i == 0 and lift_of:
                per_arm = lifts.get(arm)
                lp, llo, lhi = _ci(
                    per_arm.get(lift_of) if isinstance(per_arm, Mapping) else None, "rel"
                )
                cell = _fmt_ci(lp, llo, lhi, pct=True, digits=1)
                if lp is not None and llo is not None and lhi is not None:
                    cell = (
                        f"[green]{cell}[/]" if llo > 0 else f"[red]{cell}[/]" if lhi < 0 else cell
                    )
                row.append(cell)
        table.add_row(*row)
    return table
