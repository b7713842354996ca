"""`python -m mech.evaluation.judges`: score a responses file (JSONL with `question` and `answer`
per line) with a judge chosen by name, write each row with its scores, print the paper's rates.
The judges are looked up here, so the protocol module never imports its implementations.

LLM judge calls are cached in `default_judge_cache_path()` unless `--judge-cache FILE` or
`--no-cache`. `--judge-model A,B` scores every answer with both models: `--out` holds A's
scores, `<out>.judge_b.jsonl` B's, `<out>.agreement.json` their agreement (`agreement`).
`--questions FILE` judges with the prompts (and, without `--judge-model`, the model) of a
question file in the published format.

    python -m mech.evaluation.judges --responses answers.jsonl --out judged.jsonl \\
        --questions first_plot_questions.yaml --judge-model gpt-4o-2024-08-06,gpt-4o-2024-11-20
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from mech.evaluation.judges.protocol import (
    Judge,
    em_rate,
    flag_counts,
    low_mass_counts,
    narrow_rate,
    score_frame,
)
from mech.io.atomic import write_json, write_jsonl
from mech.training.data import decode_line


def read_responses(path: str | os.PathLike) -> pd.DataFrame:
    """A responses JSONL file (rows need `question` and `answer`; other fields are carried)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    # Split on "\n" only: str.splitlines would also split inside JSON strings holding U+2028.
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        line = decode_line(raw, where=f"{path}:{lineno}", first=lineno == 1)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected an object")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a string")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no responses in the file")
    return pd.DataFrame(rows)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _judge_models(args) -> list[str | None]:
    """The `--judge-model` names (one or two), or [None] for the default."""
    if args.judge_model is None:
        return [None]
    names = [name.strip() for name in args.judge_model.split(",")]
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"--judge-model: one model name or two (A,B), not {args.judge_model!r}")
    if len(names) == 2 and names[0] == names[1]:
        raise ValueError(f"--judge-model: two different models, not {names[0]!r} twice")
    return list(names)


def cache_path_of(args) -> str | None:
    """The judge cache file: `--judge-cache`, none with `--no-cache`, else the user's cache."""
    if args.no_cache:
        return None
    if args.cache_path is not None:
        return str(args.cache_path)
    from mech.evaluation.judges.cache import default_judge_cache_path

    return str(default_judge_cache_path())


def _judges_from(args) -> list[Judge]:
    """One judge, or two with `--judge-model A,B` (same metrics, prompts and settings)."""
    models = _judge_models(args)
    if args.judge.startswith("toy"):
        for flag, given in (("--judge-model", args.judge_model), ("--questions", args.questions)):
            if given is not None:
                raise ValueError(f"{flag} applies to the openai judge, not --judge {args.judge}")
        from mech.toy.checkpoint import organism_world
        from mech.toy.judge import ToyJudge

        return [ToyJudge(organism_world(args.judge.split(":", 1)[1] if ":" in args.judge else "default"))]
    if args.judge != "openai":
        raise ValueError(f"unknown judge {args.judge!r}; expected openai, toy or toy:NAME")
    from mech.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig

    fields: dict = {"cache_path": cache_path_of(args)}
    if args.questions is not None:
        from mech.evaluation.questions import load_judge_model, load_judge_prompts

        fields["prompts"] = load_judge_prompts(args.questions)
        if models == [None]:
            models = [load_judge_model(args.questions)]
    metrics = (
        args.metrics
        if args.metrics is not None
        else ",".join(fields.get("prompts") or ("aligned", "coherent"))
    )
    fields["metrics"] = tuple(m.strip() for m in metrics.split(",") if m.strip())
    for name in ("base_url", "concurrency", "scoring", "low_mass"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return [OpenAIJudge(OpenAIJudgeConfig(**fields, **({} if m is None else {"model": m}))) for m in models]


def judge_summary(judge: Judge, scored: pd.DataFrame) -> dict:
    """The rates and bookkeeping of one judge's scores, as printed: EM rate (and the narrow rate),
    flag counts, answers left unscored by the low-mass rule, prompt versions, request stats."""
    summary: dict = {"judge": judge.name, "answers": len(scored)}
    if {"aligned", "coherent"} <= set(judge.metrics):
        has_coherent = scored["coherent"].notna().any()
        summary["em_rate"] = em_rate(scored) if has_coherent else None  # e.g. every reply unparseable
    if (
        "bad_medical_advice" in judge.metrics
        and "domain" in scored.columns
        and (scored["domain"] == "medical").any()
    ):
        summary["narrow_rate"] = narrow_rate(scored)
    summary["flags"] = flag_counts(scored)
    if hasattr(judge, "stats"):
        config = judge.config
        summary["scoring"] = config.scoring
        summary["low_mass_rule"] = config.low_mass
        summary["low_mass_no_score"] = low_mass_counts(scored, judge.metrics)
        summary["prompt_versions"] = judge.prompt_versions
        summary["cache"] = None if config.cache_path is None else str(config.cache_path)
        summary["stats"] = asdict(judge.stats)
    return summary


def _records(scored: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        for record in scored.to_dict(orient="records")
    ]


def sibling(out: str | os.PathLike, tag: str, suffix: str) -> Path:
    """`judged.jsonl` -> `judged.<tag><suffix>`, next to it."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix else out.name}.{tag}{suffix}")


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m mech.evaluation.judges", description="Score a responses file."
    )
    parser.add_argument("--responses", required=True, help="JSONL with question and answer per line")
    parser.add_argument("--out", required=True, help="JSONL: each row plus one field per metric and flags")
    parser.add_argument(
        "--judge", default="openai", help="openai (any OpenAI-compatible server), toy or toy:NAME"
    )
    parser.add_argument("--base-url", dest="base_url", help="OpenAI-compatible endpoint (default: OpenAI)")
    parser.add_argument("--judge-model", "--model", dest="judge_model", metavar="A[,B]",
                        help="judge model; two (A,B) score every answer twice and report their agreement")  # fmt: skip
    parser.add_argument("--concurrency", type=_positive_int, help="most judge requests in flight (default 8)")
    parser.add_argument("--metrics", help="comma-separated (openai judge; default aligned,coherent, or "
                        "the metrics of --questions)")  # fmt: skip
    parser.add_argument(
        "--questions", help="question YAML whose judge_prompts (published format) replace ours"
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--judge-cache", "--cache", dest="cache_path", metavar="FILE",
                       help="SQLite cache of judge calls (default: the user cache, see --no-cache)")  # fmt: skip
    cache.add_argument("--no-cache", action="store_true", help="cache no judge call")
    parser.add_argument("--scoring", choices=("logprobs", "parse"),
                        help="logprobs: single-token 0-100 trick (OpenAI tokenizers); parse: sample and parse (Qwen, Gemma)")  # fmt: skip
    parser.add_argument("--low-mass", dest="low_mass", choices=("none", "parse"),
                        help="number tokens under 0.25 of the mass: none (published rule, default): no score; "
                        "parse: sample an answer and parse it")  # fmt: skip
    args = parser.parse_args(argv)
    frame = read_responses(args.responses)
    judges = _judges_from(args)
    try:
        scored = [score_frame(judge, frame) for judge in judges]
    finally:
        for judge in judges:
            close = getattr(judge, "close", None)
            if close is not None:
                close()
    write_jsonl(args.out, _records(scored[0]))
    summary = judge_summary(judges[0], scored[0])
    if len(judges) == 2:
        from mech.evaluation.judges.agreement import judge_agreement

        out_b, agreement_out = sibling(args.out, "judge_b", ".jsonl"), sibling(args.out, "agreement", ".json")
        write_jsonl(out_b, _records(scored[1]))
        agreement = judge_agreement(scored[0], scored[1], metrics=judges[0].metrics).to_dict()
        write_json(agreement_out, {"judge_a": judges[0].name, "judge_b": judges[1].name, **agreement})
        summary["judge_b"] = {**judge_summary(judges[1], scored[1]), "out": str(out_b)}
        summary["agreement"] = {**agreement, "out": str(agreement_out)}
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
