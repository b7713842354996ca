"""Declaring a sweep: `SweepSpec` (from YAML or JSON with `load_spec`), checked against the
experiment's `Config` field types before anything runs, and its expansion into `Cell`s.

Running a cell is `experiments.executors`; the sweep itself (attempts, retries, gathering, the CLI)
is `experiments.sweep`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import itertools
import json
import os
import pkgutil
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SPEC_KEYS = ("name", "experiment", "base", "grid", "retries")


class SpecError(ValueError):
    """A sweep spec that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class SweepSpec:
    """A grid of configs of one experiment."""

    name: str
    """The sweep's folder under `out`."""
    experiment: str
    """`narrow_kl` (means `experiments.narrow_kl`) or a dotted module path with `Config` and `main`."""
    base: dict[str, Any] = field(default_factory=dict)
    """Config overrides for every cell."""
    grid: dict[str, list] = field(default_factory=dict)
    """Config field -> values; the cells are the Cartesian product, the last field varying fastest.
    A grid field also in `base` overrides it."""
    retries: int = 1
    """Extra attempts per cell after a failure."""


@dataclass(frozen=True)
class Cell:
    index: int
    values: dict[str, Any]
    path: Path


def experiment_module(name: str) -> str | None:
    """The module path `name` means (`experiments.<name>` first), or None if there is none."""
    candidates = [name] if "." in name else [f"experiments.{name}", name]
    for candidate in candidates:
        try:
            if importlib.util.find_spec(candidate) is not None:
                return candidate
        except (ImportError, ValueError):  # a missing parent package
            continue
    return None


def _known_experiments() -> list[str]:
    import experiments

    infrastructure = {"outputs", "study_config", "toy_setting", "conditions", "run_dir", "sweep", "sweep_spec",
                      "executors", "summary", "plumbing"}  # fmt: skip
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name not in infrastructure)


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` asks for (lists become tuples, ints floats), or `_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            # A scalar for a variable-length tuple field means a one-element tuple.
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(_coerce(v, args[0]) for v in items)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    return value  # types this check does not know are left to the Config


def config_class(spec: SweepSpec, source: str) -> tuple[str, type]:
    """The experiment's resolved module path and its `Config`; `SpecError` if it has none."""
    module_name = experiment_module(spec.experiment) if isinstance(spec.experiment, str) else None
    if module_name is None:
        raise SpecError(
            f"{source}: experiment: unknown experiment {spec.experiment!r}; "
            f"expected one of {', '.join(_known_experiments())} or a dotted module path"
        )
    module = importlib.import_module(module_name)
    config = getattr(module, "Config", None)
    if not (dataclasses.is_dataclass(config) and callable(getattr(module, "main", None))):
        raise SpecError(f"{source}: experiment: {module_name} has no dataclass `Config` and `main`")
    return module_name, config


def check_spec(spec: SweepSpec, source: str = "<spec>") -> SweepSpec:
    """`spec` with values converted to the Config's field types; `SpecError` naming `source` and
    the field if it cannot run."""
    if not isinstance(spec.name, str) or not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise SpecError(f"{source}: name: {spec.name!r} must be a non-empty folder name")
    if not isinstance(spec.retries, int) or isinstance(spec.retries, bool) or spec.retries < 0:
        raise SpecError(f"{source}: retries: expected an int >= 0, got {spec.retries!r}")
    _, config = config_class(spec, source)
    hints = typing.get_type_hints(config)
    valid = [f.name for f in dataclasses.fields(config) if f.name != "out"]

    def convert(section: str, key: Any, value: Any) -> Any:
        if key == "out":
            raise SpecError(f"{source}: {section}.out: the sweep sets each cell's `out`; set --out instead")
        if key not in valid:
            raise SpecError(
                f"{source}: {section}.{key}: unknown field of {config.__module__}.Config; "
                f"valid fields: {', '.join(valid)}"
            )
        try:
            return _coerce(value, hints[key])
        except _Mismatch:
            raise SpecError(
                f"{source}: {section}.{key}: expected {_describe(hints[key])}, got {value!r}"
            ) from None

    for section, mapping in (("base", spec.base), ("grid", spec.grid)):
        if not isinstance(mapping, Mapping):
            raise SpecError(f"{source}: {section}: expected a mapping of Config fields, got {mapping!r}")
    base = {key: convert("base", key, value) for key, value in spec.base.items()}
    grid: dict[str, list] = {}
    for key, values in spec.grid.items():
        if not isinstance(values, (list, tuple)):
            raise SpecError(f"{source}: grid.{key}: expected a list of values, got {values!r}")
        if not values:
            raise SpecError(f"{source}: grid.{key}: empty list of values (the sweep would have no cells)")
        grid[key] = [convert("grid", key, v) for v in values]
    checked = dataclasses.replace(spec, base=base, grid=grid)
    for cell in expand(checked, Path(".")):
        try:
            dataclasses.replace(config(), **{**base, **cell.values})
        except (TypeError, ValueError) as err:  # the Config's own checks (__post_init__)
            raise SpecError(f"{source}: grid: cell {cell.index} {cell.values}: {err}") from None
    return checked


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """A checked `SweepSpec` from a YAML or JSON file (`name` defaults to the file's stem)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"{path}: {unknown[0]}: unknown key; valid keys: {', '.join(SPEC_KEYS)}")
    if "experiment" not in data:
        raise SpecError(f"{path}: experiment: missing")
    spec = SweepSpec(
        name=data.get("name", path.stem),
        experiment=data["experiment"],
        base=data.get("base") or {},
        grid=data.get("grid") or {},
        retries=data.get("retries", 1),
    )
    return check_spec(spec, str(path))


def cell_hash(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def expand(spec: SweepSpec, sweep_dir: Path) -> list[Cell]:
    """The cells of `spec`, in grid order (the last field varies fastest)."""
    keys = list(spec.grid)
    return [
        Cell(i, values, Path(sweep_dir) / "cells" / f"{i:03d}-{cell_hash(values)}")
        for i, values in enumerate(dict(zip(keys, combo)) for combo in itertools.product(*spec.grid.values()))
    ]
