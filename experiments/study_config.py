"""The fields every experiment shares (`StudyConfig`, `PairConfig`) and the command-line flags
made from an experiment's Config dataclass (`parse_config`)."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Trait = Literal["misalignment", "technical"]


@dataclass(frozen=True)
class StudyConfig:
    """Fields every experiment shares; each script's `Config` extends it (and may change defaults)."""

    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8", "lora_r32")
    seeds: tuple[int, ...] = (0, 1, 2)
    l2_weight: float = 1e-3
    """Norm control on the update's squared norm, alike for general and narrow runs."""
    train_size: int | None = None
    kl_size: int | None = None
    """Conversations of the narrow training set and of the KL set to use (seeded samples, the same
    for every run of the study); None: all of them."""
    question_stride: int = 1
    """Measure on every `question_stride`-th evaluation question (1 = all)."""
    out: str = "runs"
    cache: bool = False
    """Reuse residuals and reference log-probs from `<out>/cache` (content-addressed: a changed
    model, data set, setting or code version is recomputed). Off by default: on the toy the
    forward passes are cheaper than the disk (a quick narrow_kl caches ~200 MB); on a 14B model
    the residuals at layer 24 and the reference log-probs are what is worth keeping."""


@dataclass(frozen=True)
class PairConfig(StudyConfig):
    """The analyses of a general (KL 0) / narrow (KL `narrow_kl`) pair of solutions."""

    steps: int = 300
    narrow_kl: float = 10.0
    from_run: str | None = None
    """Analyse the solutions saved by an earlier run (e.g. `narrow_kl`) instead of training."""


def _scalar_type(config_cls, name: str, default) -> type:
    """The type a flag's value is read as: the default's, or for a None default the non-None
    member of the annotation (`int | None` -> int)."""
    if default is not None:
        return type(default)
    hint = typing.get_type_hints(config_cls)[name]
    members = [t for t in typing.get_args(hint) if t is not type(None)]
    return members[0] if len(members) == 1 and members[0] in (int, float, str) else str


def parse_config(config_cls, quick: dict, description: str | None, argv: Sequence[str] | None = None):
    """Command-line flags from a Config dataclass: `--field-name VALUE` for every field (tuples
    as comma-separated lists), plus `--quick`, which applies `quick` before any flag."""
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (<= 60 s on 2 cores), for tests")
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        default, flag = getattr(defaults, f.name), "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, help=f"comma-separated (default: {','.join(map(str, default))})")
        elif isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"default: {default}"
            )
        elif f.name == "trait":
            parser.add_argument(flag, choices=("misalignment", "technical"), help=f"default: {default}")
        else:
            parser.add_argument(
                flag, type=_scalar_type(config_cls, f.name, default), help=f"default: {default}"
            )
    args = parser.parse_args(argv)
    cfg = replace(defaults, **quick) if args.quick else defaults
    overrides = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name)
        if value is None:
            continue
        if isinstance(getattr(defaults, f.name), tuple):
            element = type(getattr(defaults, f.name)[0]) if getattr(defaults, f.name) else str
            value = tuple(element(v.strip()) for v in value.split(",") if v.strip())
        overrides[f.name] = value
    return replace(cfg, **overrides)
