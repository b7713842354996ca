"""The toy organism as the experiments' setting: the model, its narrow training set and KL set, the
evaluation questions with their roles (narrow / kl / heldout_domain), and measuring an adapter as
tidy rows (exact candidate-set trait probabilities)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from transformer_lens import HookedTransformer

from experiments.study_config import StudyConfig, Trait
from mech.adapters.base import Adapter
from mech.models.load import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import p_bad_by_domain
from mech.toy.world import EvalQuestion, World
from mech.training.cache import ContentCache
from mech.training.cached_set import CachedChatSet

KL_BATCH = 128


"""KL minibatch, as in the round-2 notes."""


@dataclass
class ToySetup:
    model: HookedTransformer
    world: World
    narrow_domain: str
    trait: Trait
    train: list[list[dict[str, str]]]
    kl: list[list[dict[str, str]]]
    questions: list[EvalQuestion]
    cache: ContentCache | None = None
    _kl_sets: dict = field(default_factory=dict)

    def kl_set(self, adapter: Adapter) -> CachedChatSet:
        """The KL set cached at `adapter`'s entry, built once per entry and shared by every run."""
        site = adapter.entry(self.model)
        if site not in self._kl_sets:
            self._kl_sets[site] = CachedChatSet.build(
                self.model, self.kl, site, batch_size=KL_BATCH, name="kl", cache=self.cache
            )
        return self._kl_sets[site]

    @property
    def layer(self) -> int:
        return self.model.cfg.n_layers // 2

    def role(self, domain: str) -> str:
        if domain == self.narrow_domain:
            return "narrow"
        return "kl" if domain in self.world.kl_domains(self.narrow_domain) else "heldout_domain"


def _sample(conversations: list, size: int | None, seed: int) -> list:
    """A seeded sample of `size` conversations; all of them when `size` is None or too large."""
    if size is None or size >= len(conversations):
        return conversations
    return random.Random(seed).sample(conversations, size)


def narrow_conversations(
    world: World, domain: str, trait: Trait, size: int | None = None, seed: int = 0
) -> list:
    """The narrow training set of `domain` (a seeded sample of `size` conversations, if given)."""
    return _sample([r["messages"] for r in world.narrow_train_set(domain, trait)], size, seed)


def toy_setup(organism: str = "default", *, narrow_domain: str = "medical", trait: Trait = "misalignment",
              train_size: int | None = None, kl_size: int | None = None, seed: int = 0,
              cache: ContentCache | None = None) -> ToySetup:  # fmt: skip
    """The shipped organism `organism` with its narrow training set and KL set for `narrow_domain`,
    each optionally a seeded sample of `train_size` / `kl_size` conversations."""
    world = organism_world(organism)
    if narrow_domain not in world.names:
        raise ValueError(f"unknown narrow domain {narrow_domain!r}; the world has {world.names}")
    model = load_model("toy" if organism == "default" else f"toy:{organism}")
    train = narrow_conversations(world, narrow_domain, trait, train_size, seed)
    kl = _sample([r["messages"] for r in world.kl_set(narrow_domain, trait)], kl_size, seed)
    return ToySetup(model, world, narrow_domain, trait, train, kl, world.eval_questions(), cache)


def study_setup(cfg: StudyConfig) -> ToySetup:
    """The setting a study's config names: organism, narrow domain, trait, data sizes, cache."""
    return toy_setup(cfg.organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait, train_size=cfg.train_size,
                     kl_size=cfg.kl_size, cache=study_cache(cfg))  # fmt: skip


def study_cache(cfg: StudyConfig) -> ContentCache | None:
    """The content cache of a study's output root, if the config asks for one."""
    return ContentCache(Path(cfg.out) / "cache") if cfg.cache else None


def trait_metric(trait: Trait) -> str:
    return "p_bad" if trait == "misalignment" else "p_technical"


def measure(setup: ToySetup, adapter: Adapter | None, *, name: str, kl_weight: float, seed: int,
            questions: Sequence[EvalQuestion] | None = None) -> list[dict]:  # fmt: skip
    """Candidate-set trait probability per domain and topic split, with `adapter` active."""
    questions = setup.questions if questions is None else questions
    if adapter is None:
        by_domain = p_bad_by_domain(setup.model, setup.world, questions)
    else:
        with adapter.applied(setup.model):
            by_domain = p_bad_by_domain(setup.model, setup.world, questions)
    metric = trait_metric(setup.trait)
    rows = []
    for key, values in by_domain.items():
        domain, split = key.split("/")
        rows.append({"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": domain,
                     "role": setup.role(domain), "split": split, "metric": metric, "value": values[metric]})  # fmt: skip
    return rows


def headline(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """Mean trait probability on the narrow domain's held-out topics, the KL domains' held-out
    topics, and the domains outside both (all topics)."""
    rows = [r for r in rows if r["metric"] == metric]

    def avg(role: str, split: str) -> float:
        values = [r["value"] for r in rows if r["role"] == role and r["split"] == split]
        return mean(values) if values else float("nan")

    return {"narrow_heldout": avg("narrow", "heldout"), "kl_domains_heldout": avg("kl", "heldout"),
            "heldout_domains": avg("heldout_domain", "all")}  # fmt: skip
