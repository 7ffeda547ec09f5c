"""The house's layers, bottom up: nothing imports from a layer above it (at module level or
inside a function), and the service imports no training algorithm."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "blendrank"
LAYERS: list[set[str]] = [
    {"errors", "config", "jsonio", "progress", "distributed", "checkpoint", "metrics", "fusion",
     "objective", "ope", "tracking", "staging"},
    {"losses", "rewards", "features", "data"},
    {"mtl", "prerank", "worlds"},
    {"algos"},
    {"bench", "serve"},
    {"cli", "api"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
FORBIDDEN = {("serve", "algos"), ("serve", "bench")}


def _area(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports() -> list[tuple[str, str, int]]:
    """(importing file, imported blendrank module, line) for every import, at any depth."""
    out = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("blendrank.") and _area(name) in LEVEL:
                    out.append((str(path.relative_to(SRC)), name, node.lineno))
                    break
    return out


def test_every_area_has_a_layer() -> None:
    areas = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if not p.name.startswith(("_", "."))
             and (p.suffix == ".py" or p.is_dir()) and p.name not in ("resources", "py.typed")}
    assert areas <= set(LEVEL), f"give these a layer: {sorted(areas - set(LEVEL))}"


def test_nothing_imports_upward() -> None:
    upward = []
    for file, module, line in _imports():
        here = Path(file).parts[0].removesuffix(".py")
        if here not in LEVEL:
            continue
        there = _area(module)
        if LEVEL[there] > LEVEL[here] or (here, there) in FORBIDDEN:
            upward.append(f"{file}:{line} imports {module} ({here} is below {there})")
    assert not upward, "\n".join(upward)
