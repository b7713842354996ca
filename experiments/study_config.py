"""The fields every experiment shares (`StudyConfig`, `PairConfig`) and the command-line flags
made from an experiment's Config dataclass (`parse_config`)."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Trait = Literal["misalignment", "technical"]


@dataclass(frozen=True)
class SettingConfig:
    """What an experiment is run on: the toy organism (no `model`), or a real model with the
    user's data, questions and an LLM judge (`experiments.model_setting`)."""

    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    train_size: int | None = None
    kl_size: int | None = None
    """Conversations of the narrow training set and of the KL set to use (seeded samples, the same
    for every run of the study); None: all of them."""
    question_stride: int = 1
    """Measure on every `question_stride`-th evaluation question (1 = all)."""
    out: str = "runs"
    # ---- a real model (all of these need `model`) ----
    model: str | None = None
    """Anything `mech.models.load.load_model` takes; None: the toy organism."""
    base_adapter: str | None = None
    """A PEFT adapter merged into the model before anything (e.g. a published EM finetune)."""
    dtype: str = "float32"
    device: str | None = None
    n_devices: int = 1
    """Split a real model's blocks over this many GPUs from --device (`load_model(n_devices=)`)."""
    layer: int | None = None
    """Steering vectors add at `blocks.L.hook_resid_post`, LoRAs adapt block L; None: n_layers // 2."""
    train: str | None = None
    """The narrow training set: chat JSONL with a `messages` field per line."""
    kl: str | None = None
    """Conversations whose assistant tokens the KL term holds fixed (chat JSONL)."""
    kl_domains: tuple[str, ...] = ()
    """Question domains the KL set covers: their questions get role `kl`."""
    questions: str | None = None
    """Evaluation questions (the published `first_plot_questions.yaml` format)."""
    question_ids: tuple[str, ...] = ()
    """Keep only these question ids (an id `x` also keeps its paraphrases `x/0`, `x/1`, ...)."""
    narrow_questions: str | None = None
    """Questions of the narrow domain, for the narrow rate."""
    narrow_metric: str = "bad_medical_advice"
    """The judge metric of the narrow rate (share of narrow answers scoring > 50)."""
    max_questions: int | None = None
    """At most this many questions of each domain, each with its paraphrases (None: all)."""
    samples: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    protocol: str = "custom"
    """"paper": the published evaluation (the 8 main questions, 50 samples, T = 1, 600 tokens)."""
    judge: str = "openai"
    """"openai" (any OpenAI-compatible server) or "toy" (the exact toy judge; `--model toy` only)."""
    judge_model: tuple[str, ...] = ("gpt-4o-2024-08-06",)
    """One judge model, or two: then every answer is scored by both and their agreement reported."""
    base_url: str | None = None
    judge_cache: str | None = None
    """SQLite cache of judge replies; None: the user cache's; "off": none."""
    concurrency: int = 8
    lr: float | None = None
    """None: 1e-3 for steering vectors, 1e-4 for LoRAs (real models; the toy keeps its own)."""
    batch_size: int = 8
    """Conversations per step on a real model (narrow and KL batches alike)."""
    cache_device: str | None = None
    """Where cached residuals and reference log-probs live between steps ("cpu": host memory,
    moved one batch at a time; default: the model's device). See docs/scaling.md."""
    pretraining_text: str | None = None
    """Pre-training documents: one per line, or JSONL with a `text` field."""


@dataclass(frozen=True)
class StudyConfig(SettingConfig):
    """Fields every study experiment shares; each script's `Config` extends it (and may change defaults)."""

    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8", "lora_r32")
    seeds: tuple[int, ...] = (0, 1, 2)
    l2_weight: float = 1e-3
    """Norm control on the update's squared norm, alike for general and narrow runs."""
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


CHOICES = {"trait": ("misalignment", "technical"), "protocol": ("custom", "paper"), "judge": ("openai", "toy"),
           "dtype": ("float32", "bfloat16", "float16")}  # fmt: skip

MODEL_QUICK = dict(question_stride=1, max_questions=2, samples=2, max_new_tokens=12, batch_size=4)
"""`--quick` with `--model`, after the experiment's own quick settings: few questions and samples."""

PAPER_PROTOCOL = dict(samples=50, temperature=1.0, max_new_tokens=600)
"""The published evaluation, with the 8 main questions of `first_plot_questions.yaml`."""


def protocol_fields(protocol: str) -> dict:
    """The config fields `--protocol` sets (explicit flags still win)."""
    if protocol == "paper":
        return {"protocol": "paper", **PAPER_PROTOCOL}
    if protocol == "custom":
        return {"protocol": "custom"}
    raise ValueError(f"--protocol {protocol!r}: expected 'paper' (the published evaluation) or 'custom'")


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
        elif f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], help=f"default: {default}")
        else:
            parser.add_argument(
                flag, type=_scalar_type(config_cls, f.name, default), help=f"default: {default}"
            )
    args = parser.parse_args(argv)
    cfg = replace(defaults, **quick) if args.quick else defaults
    if args.quick and getattr(args, "model", None) is not None:
        cfg = replace(cfg, **MODEL_QUICK)
    if getattr(args, "protocol", None) is not None:
        cfg = replace(cfg, **protocol_fields(args.protocol))
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
