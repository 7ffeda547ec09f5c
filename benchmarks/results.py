"""Rerun the headline benchmarks and rewrite their tables in docs/benchmarks.md (`make results`).

    python benchmarks/results.py [--only NAME,...] [--runs DIR] [--render]

Each table of the results page that this script owns sits between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; it is replaced by the table rendered from the runs' ``bench.json``,
with the date, the machine and the wall time of the run. ``--render`` re-renders from the outputs
already in ``--runs`` without running anything. The kuairand-sim run fits the world's models once
(minutes) and caches them in ``$BLENDRANK_CACHE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
#: Presets never used to choose the bench defaults: (row label, run folder, extra bench arguments).
PRESETS = [(p, p, ["--preset", p]) for p in ("luxury", "multi_objective", "bargain", "homogeneous")]
PRESETS += [("homogeneous, world seed 5", "homogeneous_s5", ["--preset", "homogeneous", "--seed", "5"])]
WORLD_ARMS = "production,static_search,ltr,grade,segment_oracle,oracle"
ABLATION_ARMS = ("production,static_search,grade,grade:gaussian,grade:post_only,grade:prior_only,grade:no_kl,"
                 "grade:no_stage1,grade:fixed_kappa,grade:prior_predictions,grade:post_ndcg,"
                 "grade:stage1_per_objective,segment_oracle,oracle")
KSIM_ARMS = "production,static_search,segment_oracle,oracle,ltr,grade,grade:prior_only,grade:post_only,integrated_rl"


def _minus(text: str) -> str:
    return text.replace("-", "−")


def _pct(lift: dict | None, digits: int = 1) -> str:
    if not lift:
        return "–"
    lo, hi = lift["ci95"]
    return _minus(f"{lift['rel'] * 100:+.{digits}f} [{lo * 100:+.{digits}f}, {hi * 100:+.{digits}f}]")


def _load(run: Path) -> dict:
    return json.loads((run / "bench.json").read_text())


def world_table(bench: dict, arms: list[str] | None = None, label: str = "arm") -> str:
    """Marketplace A/B lifts vs production: value, CTR, CVR, OPM, GPM, vs static, oracle share."""
    rows = [f"| {label} | value | CTR | CVR | OPM | GPM | value vs static | oracle share |",
            "|---|---|---|---|---|---|---|---|"]
    vs, share = bench.get("lifts_vs_static", {}), bench.get("oracle_share", {})
    for arm in arms or [a for a in bench["lifts"] if a != "static_search"]:
        lift = bench["lifts"][arm]
        cells = [_pct(lift.get(m)) for m in ("value", "ctr", "cvr", "opm", "gpm")]
        cells += [_pct(vs.get(arm, {}).get("value")), _minus(f"{share.get(arm, 0.0) * 100:.1f}%")]
        rows.append(f"| {'**grade**' if arm == 'grade' else arm} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ksim_table(bench: dict) -> str:
    rows = ["| arm | value / session | value lift | page_value lift | watch lift | session length lift | oracle share (page_value) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    share = bench.get("oracle_share", {})
    for arm, m in bench["arms_realised"].items():
        lift = bench["lifts"].get(arm, {})
        cells = [f"{m['value']:,.0f}"] + [_pct(lift.get(k)) for k in ("value", "page_value", "watch_per_session", "session_length")]
        rows.append(f"| {'**grade**' if arm == 'grade' else arm} | " + " | ".join(cells)
                    + f" | {_minus(f'{share.get(arm, 0.0) * 100:.1f}%')} |")
    return "\n".join(rows)


def logs_table(bench: dict) -> str:
    metric, value = bench["value_metric"], next((k for k in bench["offline"]["production"] if k.startswith("value@")), None)
    rows = [f"| arm | {metric} | vs production | {value} vs production |", "|---|---|---|---|"]
    for arm, m in bench["arms"].items():
        lift = bench["lifts"].get(arm, {})
        rows.append(f"| {'**grade**' if arm == 'grade' else arm} | {m[metric]:.4f} | {_pct(lift.get(metric))} | "
                    f"{_pct(lift.get(value)) if value else '–'} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Block:
    """A table of the page: the commands that measure it (``{out}`` = its run folder) and how it
    is drawn from their outputs."""

    name: str
    commands: list[list[str]]
    render: Callable[[Path], str]


def _presets(run: Path) -> str:
    table = world_table(_load(run / PRESETS[0][1]), ["grade"], "preset").splitlines()[:2]
    for label, folder, _ in PRESETS:
        table += [re.sub(r"^\| \*\*grade\*\* ", f"| {label} ", world_table(_load(run / folder), ["grade"]).splitlines()[2])]
    return "\n".join(table)


def _one_grade(run: Path) -> str:
    bench, ev = _load(run / "bench"), _load(run / "eval")
    rows = ["| arm | value | CTR | CVR | OPM | GPM |", "|---|---|---|---|---|---|"]
    for label, lift in (("`grade` in `bench`", bench["lifts"]["grade"]), ("the `train`ed policy in `eval`", ev["lifts"]["policy"])):
        rows.append(f"| {label} | " + " | ".join(_pct(lift[m]) for m in ("value", "ctr", "cvr", "opm", "gpm")) + " |")
    return "\n".join(rows)


def blocks() -> list[Block]:
    bench = ["bench", "--world", "marketplace"]
    kr = [["data", "kuairand", "--out", "{out}/kr"],
          ["mtl", "train", "--data", "{out}/kr", "--out", "{out}/kr_mtl", "--set", "wide_lr=0.02"]]
    kr += [["mtl", "predict", "--model", "{out}/kr_mtl", "--data", f"{{out}}/kr/{s}.parquet", "--out", f"{{out}}/krp/{s}.parquet"]
           for s in ("train", "valid", "test")]
    kr += [["copy", "{out}/kr/objective.yaml", "{out}/krp/objective.yaml"],
           ["bench", "--data", "{out}/krp", "--methods", "production,logged,static_search,ltr,grade", "--out", "{out}/bench"]]
    return [
        Block("marketplace-default", [[*bench, "--preset", "default", "--methods", WORLD_ARMS, "--out", "{out}"]],
              lambda run: world_table(_load(run))),
        Block("marketplace-presets", [[*bench, *extra, "--methods", WORLD_ARMS, "--out", f"{{out}}/{folder}"]
                                      for _, folder, extra in PRESETS], _presets),
        Block("ablations", [[*bench, "--preset", "default", "--methods", ABLATION_ARMS, "--out", "{out}"]],
              lambda run: world_table(_load(run))),
        Block("one-grade", [[*bench, "--preset", "quick", "--methods", "production,grade", "--set", "save_training_logs=true",
                             "--out", "{out}/bench"],
                            ["train", "--method", "grade", "--data", "{out}/bench/training_logs", "--out", "{out}/policy"],
                            ["eval", "--policy", "{out}/policy", "--world", "marketplace", "--preset", "quick", "--out", "{out}/eval"]],
              _one_grade),
        Block("kuairand-sim-default", [["bench", "--world", "kuairand-sim", "--preset", "default", "--methods", KSIM_ARMS,
                                        "--out", "{out}"]],
              lambda run: ksim_table(_load(run))),
        Block("kuairand-logs", kr, lambda run: logs_table(_load(run / "bench"))),
    ]


def run_block(block: Block, out: Path) -> float:
    """Run the block's commands into ``out``; returns the wall time in seconds."""
    exe = Path(sys.executable).with_name("blendrank")
    t = time.perf_counter()
    for cmd in block.commands:
        args = [a.replace("{out}", str(out)) for a in cmd]
        if args[0] == "copy":
            Path(args[2]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args[1], args[2])
            continue
        print("$ blendrank " + " ".join(args), flush=True)
        subprocess.run([str(exe), *args], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t


def machine() -> str:
    return f"{os.cpu_count()} cores {platform.machine()}, Python {platform.python_version()}"


def replace_block(page: str, name: str, table: str, stamp: str) -> str:
    """``page`` with the content between the block's markers replaced by ``stamp`` and ``table``."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in page or end not in page:
        raise SystemExit(f"{PAGE}: no {start} … {end} markers")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{stamp}\n\n{table}\n{end}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated block names (default: all)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "results", help="where the runs write")
    ap.add_argument("--render", action="store_true", help="only re-render the tables from existing runs")
    args = ap.parse_args()
    chosen = [b for b in blocks() if not args.only or b.name in args.only.split(",")]
    page = PAGE.read_text(encoding="utf-8")
    for block in chosen:
        out = args.runs / block.name
        wall = None if args.render else run_block(block, out)
        when = dt.date.today().isoformat()
        stamp = f"*Measured {when} on {machine()}" + (f", {wall / 60:.0f} min" if wall else "") + " (`make results`).*"
        page = replace_block(page, block.name, block.render(out), stamp)
        PAGE.write_text(page, encoding="utf-8")
        print(f"{block.name}: table rewritten", flush=True)


if __name__ == "__main__":
    main()
