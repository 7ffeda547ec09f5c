"""``blendrank config show NAME``: every field of a config, with its default and description."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, get_origin

import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.padding import Padding

from blendrank.cli.common import out, user_errors
from blendrank.config import BaseConfig
from blendrank.errors import ConfigError

#: The names ``config show`` takes, in the order it lists them.
CONFIG_NAMES = ("bench", "logbench", "train", "grade", "static_search", "integrated_rl", "mtl")


def configs() -> dict[str, tuple[type[BaseConfig], str]]:
    """``NAME`` -> (config class, which command reads it). Imported on use, not at start-up:
    the bench modules pull in every method (about 0.7 s) and most commands need none of it."""
    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.integrated_rl.config import IntegratedRLConfig
    from blendrank.algos.static_search.config import StaticSearchConfig
    from blendrank.bench.logs import LogBenchConfig
    from blendrank.bench.world import BenchConfig
    from blendrank.mtl.config import MTLConfig

    table: dict[str, tuple[type[BaseConfig], str]] = {
        "bench": (BenchConfig, "bench --world (--config / --set)"),
        "logbench": (LogBenchConfig, "bench --data (--config / --set)"),
        "train": (GRADEConfig, "train --method grade|ltr (static_search, integrated_rl: own names)"),
        "grade": (GRADEConfig, "train --method grade; the grade section of logbench"),
        "static_search": (StaticSearchConfig, "train --method static_search; logbench's section"),
        "integrated_rl": (IntegratedRLConfig, "train --method integrated_rl; logbench's section"),
        "mtl": (MTLConfig, "mtl train (--config / --set)"),
    }
    assert tuple(table) == CONFIG_NAMES
    return table

app = typer.Typer(help="Inspect configuration: every field, its default and its meaning.",
                  no_args_is_help=True)


def _subclasses(cls: type[BaseConfig]) -> Iterator[type[BaseConfig]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def find_config(name: str) -> tuple[type[BaseConfig], str]:
    """A config class and what reads it, by short name (:data:`CONFIG_NAMES`) or by class name
    (any loaded config, as error messages name them), case-insensitively."""
    key = name.strip().lower().replace("-", "_")
    table = configs()
    if key in table:
        return table[key]
    for cls in _subclasses(BaseConfig):
        if cls.__name__.lower() == key:
            return cls, ""
    raise ConfigError(f"config {name!r}: unknown; choose one of {', '.join(CONFIG_NAMES)} "
                      "(or a class name such as LogBenchConfig)")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
    return re.sub(r"\b(?:[a-z_][\w]*\.)+([A-Z]\w*)", r"\1", text)


def _value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def config_fields(cls: type[BaseModel], instance: BaseModel | None = None,
                  prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(dotted name, type, default, description)`` of every field, nested configs expanded
    (their defaults as the parent sets them). A required field's default is ``(required)``."""
    instance = instance if instance is not None else cls.model_construct()
    for name, info in cls.model_fields.items():
        value = getattr(instance, name, None)
        dotted = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield dotted, type(value).__name__, "(section)", info.description or ""
            yield from config_fields(type(value), value, f"{dotted}.")
            continue
        default = "(required)" if info.is_required() else _value(value)
        yield dotted, _type_name(info.annotation), default, info.description or ""


@app.command("show")
@user_errors
def show(
    name: str = typer.Argument(..., help=f"Config: {', '.join(CONFIG_NAMES)}, or a class name."),
) -> None:
    """Print every field of a config (dotted names for sections, as --set takes them) with its
    type, default and description: `KEY (TYPE) = DEFAULT`, the description indented below."""
    cls, used_by = find_config(name)
    out.print(f"[bold]{cls.__name__}[/]" + (f": {escape(used_by)}" if used_by else ""),
              highlight=False)
    for key, type_name, default, description in config_fields(cls):
        out.print(f"[bold]{escape(key)}[/] ({escape(type_name)}) = {escape(default)}",
                  highlight=False, overflow="fold")
        if description:
            out.print(Padding(escape(description), (0, 0, 0, 4)), highlight=False)
