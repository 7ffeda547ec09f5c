"""`make results`: the results page's tables are drawn from bench.json and replaced in place."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "bench_example.json"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_world_table_reads_the_lifts(results) -> None:
    bench = json.loads(FIXTURE.read_text())
    table = results.world_table(bench).splitlines()
    assert table[0].startswith("| arm | value | CTR")
    grade = next(r for r in table if r.startswith("| **grade** "))
    rel = bench["lifts"]["grade"]["value"]["rel"] * 100
    assert f"{rel:+.1f}".replace("-", "−") in grade.split("|")[2]
    assert all("static_search |" not in r for r in table[2:])  # the baseline of "vs static" is not a row


def test_replace_block_keeps_the_rest_of_the_page(results) -> None:
    page = "intro\n<!-- results:x -->\nold table\n<!-- /results:x -->\noutro\n"
    out = results.replace_block(page, "x", "| new |", "*stamp*")
    assert out == "intro\n<!-- results:x -->\n*stamp*\n\n| new |\n<!-- /results:x -->\noutro\n"
    with pytest.raises(SystemExit, match="no <!-- results:y -->"):
        results.replace_block(page, "y", "t", "s")


def test_every_block_has_markers_on_the_page(results) -> None:
    page = results.PAGE.read_text(encoding="utf-8")
    for block in results.blocks():
        assert f"<!-- results:{block.name} -->" in page and f"<!-- /results:{block.name} -->" in page
