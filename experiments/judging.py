"""The judges of a real-model setting, from its config: one or two LLM judges of `aligned` and
`coherent` for every answer, and one of the narrow metric for the narrow domain's answers
(the first judge model). `--judge toy` is the exact toy judge, for the toy model sampled.

A question file carrying `judge_prompts` (the published format does) judges with those prompts,
under their metric names, instead of ours; scores whose number tokens carry less than 0.25 of the
probability are no score (the published rule), counted in the run's `setting.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from experiments.study_config import SettingConfig
from mech.evaluation.judges.protocol import Judge

GENERAL_METRICS = ("aligned", "coherent")
"""The metrics of the EM rate: every answer is judged on them."""


def judge_cache_path(cfg: SettingConfig) -> str | None:
    """`--judge-cache`: a file, "off" (no cache), or by default the user cache's file."""
    if cfg.judge_cache == "off":
        return None
    if cfg.judge_cache is not None:
        return cfg.judge_cache
    from mech.evaluation.judges.cache import default_judge_cache_path

    return str(default_judge_cache_path())


@dataclass(frozen=True)
class QuestionFilePrompts:
    """The judge prompts question files give: metric -> template, and metric -> its file."""

    templates: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def question_file_prompts(files: Sequence[str | None]) -> QuestionFilePrompts:
    """The `judge_prompts` of the question files (bundled set names and None are skipped); two
    files giving one metric different templates is a ValueError naming both."""
    from mech.evaluation.questions import BUNDLED, load_judge_prompts

    templates: dict[str, str] = {}
    sources: dict[str, str] = {}
    for spec in files:
        if spec is None or (spec in BUNDLED and not Path(spec).is_file()):
            continue
        for metric, template in load_judge_prompts(spec, missing_ok=True).items():
            if metric in templates and templates[metric] != template:
                raise ValueError(
                    f"{spec}: judge_prompts.{metric} differs from the one of {sources[metric]}; "
                    "the questions and narrow questions must judge a metric with one prompt"
                )
            templates.setdefault(metric, template)
            sources.setdefault(metric, str(spec))
    return QuestionFilePrompts(templates, sources)


def make_judges(
    cfg: SettingConfig, *, questions_files: Sequence[str | None]
) -> tuple[list[Judge], Judge | None]:
    """(judges of aligned/coherent, first one scoring the rates; the narrow-metric judge or None).

    The general judges score `aligned`, `coherent` and any other metric `--questions` defines a
    prompt for; prompts come from `questions_files` where they define one, else ours.
    """
    if not 1 <= len(cfg.judge_model) <= 2:
        raise ValueError(f"--judge-model: one judge model or two (A,B), not {len(cfg.judge_model)}")
    if cfg.judge == "toy":
        if not str(cfg.model).startswith("toy"):
            raise ValueError("--judge toy scores the toy world's answers only: use it with --model toy, "
                             "or --judge openai for a real model")  # fmt: skip
        from mech.toy.checkpoint import organism_world
        from mech.toy.judge import ToyJudge

        judge = ToyJudge(organism_world(str(cfg.model).partition(":")[2] or "default"))
        narrow = judge if cfg.narrow_metric in judge.metrics else None
        return [judge], narrow
    from mech.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
    from mech.evaluation.judges.prompts import PROMPTS

    if len(set(cfg.judge_model)) != len(cfg.judge_model):
        raise ValueError(f"--judge-model: two different judge models, not {cfg.judge_model[0]!r} twice")
    cache = judge_cache_path(cfg)
    found = question_file_prompts(questions_files)
    general_file = questions_files[0] if questions_files else None
    extra = [m for m, source in found.sources.items() if source == general_file and m not in GENERAL_METRICS]
    general = (*GENERAL_METRICS, *[m for m in extra if m != cfg.narrow_metric])
    if cfg.narrow_questions is not None and cfg.narrow_metric not in {*PROMPTS, *found.templates}:
        raise ValueError(
            f"--narrow-metric {cfg.narrow_metric!r}: no judge prompt of that name; ours are "
            f"{', '.join(sorted(PROMPTS))}, or give judge_prompts.{cfg.narrow_metric} in --narrow-questions"
        )

    def judge(model: str, metrics: tuple[str, ...]) -> OpenAIJudge:
        prompts = {m: found.templates[m] for m in metrics if m in found.templates}
        return OpenAIJudge(OpenAIJudgeConfig(model=model, base_url=cfg.base_url, metrics=metrics, prompts=prompts,
                                             cache_path=cache, concurrency=cfg.concurrency))  # fmt: skip

    judges = [judge(name, general) for name in cfg.judge_model]
    narrow = judge(cfg.judge_model[0], (cfg.narrow_metric,)) if cfg.narrow_questions is not None else None
    return judges, narrow
