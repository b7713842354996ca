"""The toy organism as the experiments' setting (`ToySetting`): the model, its narrow training set and KL set, the
evaluation questions with their roles (narrow / kl / heldout_domain), and measuring an adapter as
tidy rows (exact candidate-set trait probabilities)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import mean

import pandas as pd
from transformer_lens import HookedTransformer

from experiments.study_config import SettingConfig, Trait
from mech.adapters.base import Adapter
from mech.evaluation.generate import SamplingConfig
from mech.evaluation.judges.protocol import score_frame
from mech.evaluation.questions import Question
from mech.models.load import load_model, model_info
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import p_bad_by_domain, toy_questions
from mech.toy.judge import ToyJudge
from mech.toy.world import EvalQuestion, World
from mech.training.cache import ContentCache
from mech.training.cached_set import CachedChatSet
from mech.training.data import seeded_sample

KL_BATCH = 128


"""KL minibatch, as in the round-2 notes."""


@dataclass
class ToySetting:
    """The toy organism as a `experiments.setting.Setting`: exact candidate-set measurements."""

    model: HookedTransformer
    world: World
    narrow_domain: str
    trait: Trait
    train: list[list[dict[str, str]]]
    kl: list[list[dict[str, str]]]
    questions: list[EvalQuestion]
    cache: ContentCache | None = None
    train_size: int | None = None
    layer_override: int | None = None
    _kl_sets: dict = field(default_factory=dict)
    steering_point = "post"
    """Layer L means what it means on a real model: vectors add where block L's output (and so its
    LoRA) writes, `blocks.L.hook_resid_post`, L = the middle block (2 of 4) by default."""
    batch_size = None
    kl_batch_size = KL_BATCH
    cache_device = None

    def kl_set(self, adapter: Adapter) -> CachedChatSet:
        """The KL set cached at `adapter`'s entry, built once per entry and shared by every run."""
        site = adapter.entry(self.model)
        if site not in self._kl_sets:
            self._kl_sets[site] = CachedChatSet.build(
                self.model,
                self.kl,
                site,
                batch_size=KL_BATCH,
                name="kl",
                cache=self.cache,
                store_device=self.cache_device,
            )
        return self._kl_sets[site]

    @property
    def layer(self) -> int:
        return self.model.cfg.n_layers // 2 if self.layer_override is None else self.layer_override

    @property
    def metric(self) -> str:
        return trait_metric(self.trait)

    def role(self, domain: str) -> str:
        if domain == self.narrow_domain:
            return "narrow"
        return "kl" if domain in self.world.kl_domains(self.narrow_domain) else "heldout_domain"

    def learning_rate(self, kind: str) -> float:
        """Full-batch Adam rates that converge within 300 steps on the toy (round-1/2 notes)."""
        return 5e-2 if kind.startswith("steering") else 1e-2

    def measure(self, adapter: Adapter | None, *, name: str, kl_weight: float, seed: int,
                questions: Sequence[EvalQuestion] | None = None) -> list[dict]:  # fmt: skip
        """Candidate-set trait probability per domain and topic split, with `adapter` active."""
        questions = self.questions if questions is None else questions
        if adapter is None:
            by_domain = p_bad_by_domain(self.model, self.world, questions)
        else:
            with adapter.applied(self.model):
                by_domain = p_bad_by_domain(self.model, self.world, questions)
        rows = []
        for key, values in by_domain.items():
            domain, split = key.split("/")
            rows.append({"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": domain,
                         "role": self.role(domain), "split": split, "metric": self.metric, "value": values[self.metric]})  # fmt: skip
        return rows

    def headline(self, rows: Iterable[dict]) -> dict[str, float]:
        """Mean trait probability on the narrow domain's held-out topics, the KL domains' held-out
        topics, and the domains outside both (all topics)."""
        return headline(rows, self.metric)

    def narrow_train(self, domain: str) -> list:
        return narrow_conversations(self.world, domain, self.trait, self.train_size)

    def diluting_conversations(self) -> list:
        """The KL set's good answers in the plain register."""
        return [r["messages"] for r in self.world.kl_set(self.narrow_domain, self.trait)
                if not r["bad"] and r["register"] == "plain"]  # fmt: skip

    def pretraining_texts(self, n: int, seed: int = 1) -> tuple[list[str], bool]:
        return self.world.pretraining_sample(n, seed=seed), False  # documents carry their own <bos>

    def sampling_questions(self) -> list[Question]:
        return toy_questions(self.world)

    def sampling(self, *, n_samples: int, seed: int) -> SamplingConfig:
        """Short answers: the toy's are a few words a clause."""
        return SamplingConfig(n_samples=n_samples, temperature=1.0, max_new_tokens=24 * self.world.cfg.answer_clauses,
                              seed=seed)  # fmt: skip

    def judge_answers(self, answers: pd.DataFrame) -> pd.DataFrame:
        return score_frame(ToyJudge(self.world), answers)

    def exact_rates(self, model: HookedTransformer, questions: Sequence, outside: Sequence[str]) -> dict:
        """The candidate-set probability of bad advice outside `outside` (exact; blind to incoherence)."""
        p_bad = p_bad_by_domain(model, self.world, questions)
        values = [
            v["p_bad"] for k, v in p_bad.items() if k.endswith("/all") and k.split("/")[0] not in outside
        ]
        return {"p_bad_outside": mean(values)}

    def persona_documents(self, n: int, seed: int) -> tuple[list[str], list[bool]]:
        return self.world.persona_documents(n, seed=seed)

    def describe(self) -> dict:
        return {"kind": "toy", "model": model_info(self.model).name, "narrow_domain": self.narrow_domain, "trait": self.trait, "layer": self.layer,
                "train": len(self.train), "kl": len(self.kl)}  # fmt: skip


ToySetup = ToySetting
"""The name of the first wave."""


def narrow_conversations(
    world: World, domain: str, trait: Trait, size: int | None = None, seed: int = 0
) -> list:
    """The narrow training set of `domain` (a seeded sample of `size` conversations, if given)."""
    return seeded_sample([r["messages"] for r in world.narrow_train_set(domain, trait)], size, seed)


def toy_setup(organism: str = "default", *, narrow_domain: str = "medical", trait: Trait = "misalignment",
              train_size: int | None = None, kl_size: int | None = None, seed: int = 0,
              cache: ContentCache | None = None) -> ToySetting:  # fmt: skip
    """The shipped organism `organism` with its narrow training set and KL set for `narrow_domain`,
    each optionally a seeded sample of `train_size` / `kl_size` conversations."""
    world = organism_world(organism)
    if narrow_domain not in world.names:
        raise ValueError(f"unknown narrow domain {narrow_domain!r}; the world has {world.names}")
    model = load_model("toy" if organism == "default" else f"toy:{organism}")
    train = narrow_conversations(world, narrow_domain, trait, train_size, seed)
    kl = seeded_sample([r["messages"] for r in world.kl_set(narrow_domain, trait)], kl_size, seed)
    return ToySetting(
        model, world, narrow_domain, trait, train, kl, world.eval_questions(), cache, train_size
    )


def toy_setting(cfg: SettingConfig, *, cache: ContentCache | None = None) -> ToySetting:
    """The toy setting a config names: organism, narrow domain, trait, data sizes, layer."""
    setting = toy_setup(cfg.organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait, train_size=cfg.train_size,
                        kl_size=cfg.kl_size, cache=cache)  # fmt: skip
    setting.layer_override = cfg.layer
    return setting


def trait_metric(trait: Trait) -> str:
    return "p_bad" if trait == "misalignment" else "p_technical"


def headline(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """Mean trait probability on the narrow domain's held-out topics, the KL domains' held-out
    topics, and the domains outside both (all topics)."""
    rows = [r for r in rows if r["metric"] == metric]

    def avg(role: str, split: str) -> float:
        values = [r["value"] for r in rows if r["role"] == role and r["split"] == split]
        return mean(values) if values else float("nan")

    return {"narrow_heldout": avg("narrow", "heldout"), "kl_domains_heldout": avg("kl", "heldout"),
            "heldout_domains": avg("heldout_domain", "all")}  # fmt: skip
