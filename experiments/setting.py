"""The one interface every experiment talks to: what a study runs on.

A `Setting` is the model, the layer, the narrow training conversations, the KL conversations,
the evaluation questions with their domains and roles (`narrow` / `kl` / `heldout_domain`), and
`measure(adapter) -> tidy rows`. Two implementations:

- `experiments.toy_setting.ToySetting`: the shipped organism, measured exactly (candidate-set
  trait probabilities; no sampling);
- `experiments.model_setting.ModelSetting`: any model `load_model` takes, with the user's data and
  questions, measured by sampling answers and scoring them with a judge (EM, narrow, coherence and
  refusal rates with bootstrap intervals).

`make_setting(cfg)` picks one from the config: no `--model` is the toy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import pandas as pd
from transformer_lens import HookedTransformer

from experiments.study_config import SettingConfig
from mech.adapters.base import Adapter
from mech.evaluation.generate import SamplingConfig
from mech.evaluation.questions import Question
from mech.training.cache import ContentCache
from mech.training.cached_set import CachedChatSet

Role = Literal["narrow", "kl", "heldout_domain"]


class Setting(Protocol):
    model: HookedTransformer
    layer: int
    narrow_domain: str
    train: list
    kl: list
    cache: ContentCache | None
    metric: str
    """The headline metric of `measure`'s rows (toy: p_bad; a real model: em_rate)."""
    steering_point: Literal["pre", "post"]
    """Where a steering vector at `layer` adds: `hook_resid_<point>` of that block."""
    batch_size: int | None
    """Conversations per training step (None: the whole set)."""
    kl_batch_size: int
    cache_device: str | None
    """Where cached residuals and references are kept (`FinetuneConfig.cache_device`)."""

    @property
    def questions(self) -> Sequence:
        """The evaluation questions `measure` asks by default (each with a `domain`)."""

    def role(self, domain: str) -> Role: ...

    def kl_set(self, adapter: Adapter) -> CachedChatSet:
        """The KL conversations cached at `adapter`'s entry (built once per entry)."""

    def learning_rate(self, kind: str) -> float: ...

    def measure(self, adapter: Adapter | None, *, name: str, kl_weight: float, seed: int,
                questions: Sequence | None = None) -> list[dict]:  # fmt: skip
        """Tidy rows (`experiments.outputs.COLUMNS`) of the model with `adapter` active."""

    def headline(self, rows: Iterable[dict]) -> dict[str, float]:
        """`narrow_heldout`, `kl_domains_heldout`, `heldout_domains` from `measure`'s rows."""

    def narrow_train(self, domain: str) -> list:
        """The narrow training set of `domain` (a real model has only its own)."""

    def diluting_conversations(self) -> list:
        """Good answers from other domains, to dilute the narrow set with (emergence's mixing)."""

    def pretraining_texts(self, n: int, seed: int = 1) -> tuple[list[str], bool]:
        """Up to `n` pre-training documents (a sample of stream `seed`, where the setting draws them)
        and whether the tokenizer should add its BOS."""

    def sampling_questions(self) -> list[Question]:
        """The evaluation questions as `Question`s, for sampling answers."""

    def sampling(self, *, n_samples: int, seed: int) -> SamplingConfig: ...

    def judge_answers(self, answers: pd.DataFrame) -> pd.DataFrame:
        """`answers` with the judge's scores (`aligned`, `coherent`, ...) and `flags`."""

    def exact_rates(self, model: HookedTransformer, questions: Sequence, outside: Sequence[str]) -> dict:
        """Rates computed without sampling, if the setting has any (the toy's p_bad outside `outside`)."""

    def persona_documents(self, n: int, seed: int) -> tuple[list[str], list[bool]] | None:
        """Documents by malicious and benign authors with their labels, where the setting knows them."""

    def describe(self) -> dict:
        """What the setting is (model, data, questions, judge and its tallies), for the run folder."""


MODEL_ONLY = ("base_adapter", "train", "kl", "kl_domains", "questions", "question_ids", "narrow_questions")
"""Flags that name a real model's inputs: with the toy they would be silently ignored."""


def make_setting(cfg: SettingConfig, *, cache: ContentCache | None = None) -> Setting:
    """The setting `cfg` names: the toy organism, or the real model of `--model`."""
    if cfg.model is None:
        defaults = SettingConfig()
        given = [f for f in MODEL_ONLY if getattr(cfg, f) != getattr(defaults, f)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"{flags}: only with --model (the toy organism has its own data and questions)")
        from experiments.toy_setting import toy_setting

        return toy_setting(cfg, cache=cache)
    from experiments.model_setting import model_setting

    return model_setting(cfg, cache=cache)


def study_cache(cfg) -> ContentCache | None:
    """The content cache of a study's output root, if the config asks for one (`--cache`)."""
    return ContentCache(Path(cfg.out) / "cache") if getattr(cfg, "cache", False) else None


def study_setup(cfg: SettingConfig) -> Setting:
    """The setting a study's config names (the toy, or `--model`), with the study's cache."""
    return make_setting(cfg, cache=study_cache(cfg))


def refuse_model(cfg: SettingConfig, experiment: str, why: str) -> None:
    """Stop a toy-only experiment given `--model`, saying why."""
    if cfg.model is not None:
        raise ValueError(f"{experiment} runs on the toy organism only ({why}); run it without --model")
