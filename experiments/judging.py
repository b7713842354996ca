"""The judges of a real-model setting, from its config: one or two LLM judges of `aligned` and
`coherent` for every answer, and one of the narrow metric for the narrow domain's answers
(the first judge model). `--judge toy` is the exact toy judge, for the toy model sampled."""

from __future__ import annotations

from collections.abc import Sequence

from experiments.study_config import SettingConfig
from mech.evaluation.judges.protocol import Judge

GENERAL_METRICS = ("aligned", "coherent")


def judge_cache_path(cfg: SettingConfig) -> str | None:
    """`--judge-cache`: a file, "off" (no cache), or by default the user cache's file."""
    if cfg.judge_cache == "off":
        return None
    if cfg.judge_cache is not None:
        return cfg.judge_cache
    import os
    from pathlib import Path

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(root / "misalign-lens" / "judge.sqlite")


def make_judges(
    cfg: SettingConfig, *, questions_files: Sequence[str | None]
) -> tuple[list[Judge], Judge | None]:
    """(judges of aligned/coherent, first one scoring the rates; the narrow-metric judge or None)."""
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

    if len(set(cfg.judge_model)) != len(cfg.judge_model):
        raise ValueError(f"--judge-model: two different judge models, not {cfg.judge_model[0]!r} twice")
    cache = judge_cache_path(cfg)

    def judge(model: str, metrics: tuple[str, ...]) -> OpenAIJudge:
        return OpenAIJudge(OpenAIJudgeConfig(model=model, base_url=cfg.base_url, metrics=metrics, cache_path=cache,
                                             concurrency=cfg.concurrency))  # fmt: skip

    judges = [judge(name, GENERAL_METRICS) for name in cfg.judge_model]
    narrow = judge(cfg.judge_model[0], (cfg.narrow_metric,)) if cfg.narrow_questions is not None else None
    return judges, narrow
