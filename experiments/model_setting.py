"""A real model as the experiments' setting: any checkpoint `load_model` takes, the user's narrow
and KL conversations (chat JSONL), their evaluation questions (the published YAML format) and an
LLM judge. `measure` samples answers (batched, seeded, with the adapter's hooks) and scores them:
EM, narrow, coherence and refusal rates per question domain, each with a 95% bootstrap interval
over questions x samples.

Layer L means one place for every kind, as in the paper (vector and rank-1 LoRA both on
`layers[L].mlp.down_proj`): a steering vector adds at `blocks.L.hook_resid_post`, a LoRA adapts
block L's matrices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import mean

import pandas as pd
from transformer_lens import HookedTransformer

from experiments.study_config import SettingConfig
from mech.adapters.base import Adapter
from mech.evaluation.documents import read_documents
from mech.evaluation.generate import SamplingConfig, sample_answers
from mech.evaluation.judges.agreement import judge_agreement
from mech.evaluation.judges.protocol import Judge, flag_counts, score_frame
from mech.evaluation.questions import BUNDLED, Question, load_questions, question_set
from mech.evaluation.rates import answer_rates
from mech.models.load import load_model, model_info
from mech.training.cache import ContentCache
from mech.training.cached_set import CachedChatSet
from mech.training.data import read_chat_jsonl, seeded_sample

SAMPLING_SEED = 0
"""One seed for every condition's answers: the same random streams (common random numbers), so
conditions differ by their adapters, not by luck."""

PAPER_EXCLUDED = ("_json", "_template")
"""Suffixes of the published file's question variants that the paper's main plot leaves out."""


@dataclass
class ModelSetting:
    """A real model as an `experiments.setting.Setting`."""

    model: HookedTransformer
    layer: int
    narrow_domain: str
    train: list
    kl: list
    questions: list[Question]
    judges: list[Judge]
    """The first scores the rates; a second one is scored alongside, for agreement."""
    narrow_judge: Judge | None
    narrow_metric: str
    sampling_config: SamplingConfig
    kl_domains: tuple[str, ...] = ()
    lr: float | None = None
    batch_size: int = 8
    cache_device: str | None = None
    pretraining_path: str | None = None
    cache: ContentCache | None = None
    sources: dict = field(default_factory=dict)
    answers: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Every scored answer set `measure` made, by condition."""
    _kl_sets: dict = field(default_factory=dict)
    metric = "em_rate"
    steering_point = "post"

    @property
    def kl_batch_size(self) -> int:
        return self.batch_size

    def role(self, domain: str) -> str:
        if domain == self.narrow_domain:
            return "narrow"
        return "kl" if domain in self.kl_domains else "heldout_domain"

    def kl_set(self, adapter: Adapter) -> CachedChatSet:
        if not self.kl:
            raise ValueError(
                "this experiment trains with a KL term: give the KL conversations with --kl FILE.jsonl"
            )
        site = adapter.entry(self.model)
        if site not in self._kl_sets:
            self._kl_sets[site] = CachedChatSet.build(
                self.model,
                self.kl,
                site,
                batch_size=self.batch_size,
                name="kl",
                cache=self.cache,
                store_device=self.cache_device,
            )
        return self._kl_sets[site]

    def learning_rate(self, kind: str) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if kind.startswith("steering") else 1e-4

    def sampling_questions(self) -> list[Question]:
        return list(self.questions)

    def sampling(self, *, n_samples: int, seed: int) -> SamplingConfig:
        return replace(self.sampling_config, n_samples=n_samples, seed=seed)

    def judge_answers(self, answers: pd.DataFrame) -> pd.DataFrame:
        """Scores of the first judge, plus `<metric>@<judge>` columns of a second one, plus the
        narrow metric on the narrow domain's answers."""
        scored = score_frame(self.judges[0], answers)
        for other in self.judges[1:]:
            extra = score_frame(other, answers)
            for metric in other.metrics:
                scored[f"{metric}@{other.name}"] = extra[metric]
            scored[f"flags@{other.name}"] = extra["flags"]
        if self.narrow_judge is not None:
            inside = (scored["domain"] == self.narrow_domain).to_numpy()
            scored[self.narrow_metric] = float("nan")
            if inside.any():
                narrow = score_frame(self.narrow_judge, answers[inside])
                scored.loc[inside, self.narrow_metric] = narrow[self.narrow_metric].astype(float).to_numpy()
                scored.loc[inside, "flags"] = pd.Series(
                    [a + b for a, b in zip(scored.loc[inside, "flags"], narrow["flags"], strict=True)],
                    index=scored.index[inside],
                )
        return scored

    def measure(self, adapter: Adapter | None, *, name: str, kl_weight: float, seed: int,
                questions: Sequence[Question] | None = None) -> list[dict]:  # fmt: skip
        """Sampled answers scored by the judge: per domain, each rate with its interval and `n`."""
        questions = self.questions if questions is None else questions
        answers = sample_answers(
            self.model, questions, self.sampling_config, adapter=adapter, cache=self.cache
        )
        scored = self.judge_answers(answers)
        self.answers[f"{name}/kl{kl_weight:g}/seed{seed}"] = scored
        judge_name = self.judges[0].name
        rows = []
        for domain, part in scored.groupby("domain", sort=False):
            role = self.role(str(domain))
            narrow = self.narrow_metric if role == "narrow" and self.narrow_judge is not None else None
            for metric, rate in answer_rates(part, narrow_metric=narrow).items():
                rows.append({"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": domain, "role": role,
                             "split": "heldout", "metric": metric, "value": rate.value, "ci_low": rate.ci_low,
                             "ci_high": rate.ci_high, "n": rate.n, "judge": judge_name})  # fmt: skip
            for other in self.judges[1:]:
                rate = answer_rates(scores_of(part, other))["em_rate"]
                rows.append({"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": domain, "role": role,
                             "split": "heldout", "metric": "em_rate", "value": rate.value, "ci_low": rate.ci_low,
                             "ci_high": rate.ci_high, "n": rate.n, "judge": other.name})  # fmt: skip
        return rows

    def headline(self, rows: Iterable[dict]) -> dict[str, float]:
        """The narrow rate on the narrow domain (its EM rate without a narrow judge), the mean EM
        rate over the KL domains, and over the domains outside both (nan where none was asked)."""
        rows = [r for r in rows if r.get("judge", self.judges[0].name) == self.judges[0].name]
        narrow_metric = "narrow_rate" if self.narrow_judge is not None else "em_rate"

        def avg(role: str, metric: str) -> float:
            values = [r["value"] for r in rows if r["role"] == role and r["metric"] == metric]
            return mean(values) if values else float("nan")

        return {"narrow_heldout": avg("narrow", narrow_metric), "kl_domains_heldout": avg("kl", "em_rate"),
                "heldout_domains": avg("heldout_domain", "em_rate")}  # fmt: skip

    def narrow_train(self, domain: str) -> list:
        if domain != self.narrow_domain:
            raise ValueError(
                f"narrow domain {domain!r}: a real model trains on --train only, whose domain is "
                f"{self.narrow_domain!r} (--narrow-domain)"
            )
        return self.train

    def diluting_conversations(self) -> list:
        if not self.kl:
            raise ValueError("diluting the narrow set needs good answers from other domains: give --kl FILE.jsonl, "
                             "or --mix-ratios '' to skip the mixing baseline")  # fmt: skip
        return self.kl

    def pretraining_texts(self, n: int, seed: int = 1) -> tuple[list[str], bool]:  # noqa: ARG002
        """The first `n` documents of `--pretraining-text` (the file's order; no sampling)."""
        if self.pretraining_path is None:
            raise ValueError("a real model needs its pre-training text: give --pretraining-text FILE "
                             "(one document per line, or JSONL with a 'text' field)")  # fmt: skip
        return read_documents(self.pretraining_path, limit=n), True

    def exact_rates(self, model: HookedTransformer, questions: Sequence, outside: Sequence[str]) -> dict:  # noqa: ARG002
        """None: a real model's rates are all sampled."""
        return {}

    def persona_documents(self, n: int, seed: int) -> None:  # noqa: ARG002
        """None: no documents of known persona."""
        return None

    def describe(self) -> dict:
        return {
            "kind": "model",
            "model": model_info(self.model).name,
            "adapter_merged": model_info(self.model).adapter,
            "dtype": str(self.model.cfg.dtype),
            "layer": self.layer,
            "steering_hook": f"blocks.{self.layer}.hook_resid_post",
            "narrow_domain": self.narrow_domain,
            "kl_domains": list(self.kl_domains),
            "train": len(self.train),
            "kl": len(self.kl),
            "questions": len(self.questions),
            "sampling": asdict(self.sampling_config),
            "judges": [judge_summary(j, self.judge_flags(j)) for j in self.judges],
            "narrow_judge": (judge_summary(self.narrow_judge, self.judge_flags(self.narrow_judge))
                             if self.narrow_judge is not None else None),
            "judge_agreement": self.judge_agreement(),
            "sources": self.sources,
        }  # fmt: skip

    def judge_flags(self, judge: Judge) -> dict[str, int]:
        """How often each flag of `judge`'s metrics occurs over every answer measured so far."""
        counts: dict[str, int] = {}
        column = "flags" if judge is self.judges[0] or judge is self.narrow_judge else f"flags@{judge.name}"
        for scored in self.answers.values():
            for flag, n in flag_counts(pd.DataFrame({"flags": scored[column]})).items():
                if flag.rpartition(":")[0] in judge.metrics:
                    counts[flag] = counts.get(flag, 0) + n
        return dict(sorted(counts.items()))

    def judge_agreement(self) -> dict | None:
        """With two judge models: their agreement on every condition's answers, and pooled over all
        (`mech.evaluation.judges.agreement`). None with one judge."""
        if len(self.judges) < 2 or not self.answers:
            return None
        first, second = self.judges
        pairs = {
            name: (scored[list(first.metrics)], scores_of(scored, second))
            for name, scored in self.answers.items()
        }
        pooled = tuple(pd.concat([pair[i] for pair in pairs.values()], ignore_index=True) for i in (0, 1))
        agree = {
            name: judge_agreement(a, b, metrics=first.metrics).to_dict() for name, (a, b) in pairs.items()
        }
        return {"judge_a": first.name, "judge_b": second.name,
                "all": judge_agreement(*pooled, metrics=first.metrics).to_dict(), "conditions": agree}  # fmt: skip


def scores_of(scored: pd.DataFrame, judge: Judge) -> pd.DataFrame:
    """The scores a second judge gave (`<metric>@<name>` columns) under the plain metric names."""
    columns = {f"{m}@{judge.name}": m for m in judge.metrics} | {f"flags@{judge.name}": "flags"}
    return scored[["question_id", *columns]].rename(columns=columns)


def judge_summary(judge: Judge, flags: dict[str, int]) -> dict:
    """A judge's name, metrics, flag counts and, for an LLM judge, its prompts (each one's version,
    and whether it is ours or a question file's, with its text), low-mass rule and request tallies."""
    summary: dict = {"name": judge.name, "metrics": list(judge.metrics), "flags": flags}
    prompts = getattr(judge, "prompts", None)
    if prompts is not None:
        from mech.evaluation.judges.prompts import PROMPTS

        summary["prompts"] = {
            metric: {"version": prompt.version,
                     "source": "ours" if metric in PROMPTS and PROMPTS[metric].template == prompt.template
                     else "question file", "template": prompt.template}
            for metric, prompt in prompts.items()
        }  # fmt: skip
        summary["low_mass_rule"] = judge.config.low_mass
        summary["low_mass_no_score"] = {m: flags.get(f"{m}:low_mass", 0) for m in judge.metrics}
    stats = getattr(judge, "stats", None)
    if stats is not None:
        summary["stats"] = {k: v for k, v in vars(stats).items() if isinstance(v, (int, float))}
    return summary


# ---- building a setting from a config ---------------------------------------------------------


def read_questions(spec: str, *, default_domain: str) -> list[Question]:
    """A question file, or a bundled set by name (`general`, `medical`)."""
    return question_set(spec) if spec in BUNDLED else load_questions(spec, default_domain=default_domain)


def select_questions(questions: list[Question], cfg: SettingConfig, source: str) -> list[Question]:
    """The paper's main questions (`--protocol paper`), those of `--question-ids`, at most
    `--max-questions`."""
    if cfg.protocol == "paper":
        questions = [q for q in questions if not q.id.split("/")[0].endswith(PAPER_EXCLUDED)]
    if cfg.question_ids:
        entries = sorted({q.id.split("/")[0] for q in questions})
        unknown = [i for i in cfg.question_ids if i not in entries and i not in {q.id for q in questions}]
        if unknown:
            raise ValueError(f"--question-ids: {unknown} not in {source} (its ids: {entries[:12]})")
        wanted = set(cfg.question_ids)
        questions = [q for q in questions if q.id in wanted or q.id.split("/")[0] in wanted]
    return first_questions(questions, cfg.max_questions)


def first_questions(questions: list[Question], n: int | None) -> list[Question]:
    """The first `n` questions of each domain, each with all its paraphrases (None: all)."""
    if n is None:
        return questions
    entries: dict[str, list[str]] = {}
    for q in questions:
        ids = entries.setdefault(q.domain, [])
        if q.id.split("/")[0] not in ids:
            ids.append(q.id.split("/")[0])
    kept = {entry for ids in entries.values() for entry in ids[:n]}
    return [q for q in questions if q.id.split("/")[0] in kept]


def evaluation_questions(cfg: SettingConfig) -> list[Question]:
    if cfg.questions is None and cfg.narrow_questions is None:
        raise ValueError("a real model is measured on questions: give --questions FILE.yaml (the published "
                         "first_plot_questions.yaml format) and --narrow-questions FILE.yaml")  # fmt: skip
    found: list[Question] = []
    if cfg.questions is not None:
        every = read_questions(cfg.questions, default_domain="general")
        domains = sorted({q.domain for q in every})
        unknown = [d for d in cfg.kl_domains if d not in domains]
        if unknown:
            raise ValueError(f"--kl-domains {unknown}: no question of {cfg.questions} has that domain "
                             f"(its domains: {domains})")  # fmt: skip
        found += select_questions(every, cfg, cfg.questions)
    if cfg.narrow_questions is not None:
        narrow = read_questions(cfg.narrow_questions, default_domain=cfg.narrow_domain)
        narrow = [replace(q, domain=cfg.narrow_domain, id=f"narrow:{q.id}") for q in narrow]
        found += first_questions(narrow, cfg.max_questions)
    return found


def check_setting_config(cfg: SettingConfig) -> None:
    """The flags of a real-model study that can be wrong on their own, checked before any file is read."""
    if cfg.train is None:
        raise ValueError("a real model needs its narrow training set: give --train FILE.jsonl (chat JSONL)")
    for flag, value, least in (("--samples", cfg.samples, 1), ("--max-new-tokens", cfg.max_new_tokens, 1),
                               ("--batch-size", cfg.batch_size, 1), ("--concurrency", cfg.concurrency, 1),
                               ("--n-devices", cfg.n_devices, 1)):  # fmt: skip
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if cfg.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy), got {cfg.temperature}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.device is not None:
        import torch

        try:
            torch.device(cfg.device)
        except RuntimeError as err:
            raise ValueError(f"--device {cfg.device!r}: {err}") from None
    if cfg.base_url is not None and not cfg.base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"--base-url {cfg.base_url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1"
        )


def model_setting(cfg: SettingConfig, *, cache: ContentCache | None = None) -> ModelSetting:
    """Load the model and every input `cfg` names, checking them all before anything is computed."""
    check_setting_config(cfg)
    from experiments.judging import make_judges

    train = seeded_sample(read_chat_jsonl(cfg.train), cfg.train_size)
    kl = seeded_sample(read_chat_jsonl(cfg.kl), cfg.kl_size) if cfg.kl is not None else []
    questions = evaluation_questions(cfg)
    judges, narrow_judge = make_judges(cfg, questions_files=[cfg.questions, cfg.narrow_questions])
    model = load_model(
        cfg.model, adapter=cfg.base_adapter, dtype=cfg.dtype, device=cfg.device, n_devices=cfg.n_devices
    )
    layer = model.cfg.n_layers // 2 if cfg.layer is None else cfg.layer
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"--layer {layer}: {cfg.model} has layers 0..{model.cfg.n_layers - 1}")
    sampling = SamplingConfig(n_samples=cfg.samples, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=SAMPLING_SEED)  # fmt: skip
    sources = {"train": cfg.train, "kl": cfg.kl, "questions": cfg.questions, "narrow_questions": cfg.narrow_questions,
               "pretraining_text": cfg.pretraining_text, "protocol": cfg.protocol}  # fmt: skip
    return ModelSetting(model, layer, cfg.narrow_domain, train, kl, questions, judges, narrow_judge, cfg.narrow_metric,
                        sampling, kl_domains=tuple(cfg.kl_domains), lr=cfg.lr, batch_size=cfg.batch_size, cache_device=cfg.cache_device,
                        pretraining_path=cfg.pretraining_text, cache=cache, sources=sources)  # fmt: skip
