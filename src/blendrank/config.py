"""Configs: pydantic models (``extra="forbid"``) loaded from YAML with ``--set key=value`` overrides.

Precedence is defaults < YAML file < ``--set`` overrides. Unknown keys are rejected, never dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from blendrank.errors import ConfigError

C = TypeVar("C", bound="BaseConfig")
#: Largest seed numpy and torch generators accept from every config (2**32 - 1).
SEED_MAX = 2**32 - 1


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key in a mapping (the plain loader keeps the
    last value silently, so a config or mapping with a key twice would ignore the first)."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping repeats a key; the message names it and both lines."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode,
                              deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges may repeat keys
            continue
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects


def read_text_utf8(path: Path, what: str = "file") -> str:
    """The text of ``path``; ConfigError naming it when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "save it as UTF-8") from None


class BaseConfig(BaseModel):
    """Base for every blendrank config: strict keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). The value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=0.001")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key; expected KEY=VALUE")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = load_yaml(read_text_utf8(path, "YAML file")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = (f"unknown key (check the spelling; `blendrank config show {exc.title}` lists "
                   "every field with its default)")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> C:
    """Build ``cls`` from ``base`` dict, then a YAML file, then ``--set`` overrides."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        data.update(read_yaml(path))
        source = str(path)
    if overrides:
        apply_overrides(data, overrides)
        source = f"{source} + --set"
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
