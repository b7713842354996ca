"""`python -m mech.evaluation.judges`: score a responses file (JSONL with `question` and `answer`
per line) with a judge chosen by name, write each row with its scores, print the paper's rates.
The judges are looked up here, so the protocol module never imports its implementations."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from mech.evaluation.judges.protocol import Judge, em_rate, narrow_rate, score_frame
from mech.io.atomic import write_jsonl
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


def _judge_from(args) -> Judge:
    if args.judge.startswith("toy"):
        from mech.toy.checkpoint import organism_world
        from mech.toy.judge import ToyJudge

        return ToyJudge(organism_world(args.judge.split(":", 1)[1] if ":" in args.judge else "default"))
    if args.judge != "openai":
        raise ValueError(f"unknown judge {args.judge!r}; expected openai, toy or toy:NAME")
    from mech.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig

    fields = {"metrics": tuple(m.strip() for m in args.metrics.split(",") if m.strip())}
    for name in ("model", "base_url", "concurrency", "cache_path", "scoring"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return OpenAIJudge(OpenAIJudgeConfig(**fields))


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
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
    parser.add_argument("--model", help="judge model name")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--metrics", default="aligned,coherent", help="comma-separated (openai judge)")
    parser.add_argument("--cache", dest="cache_path", help="SQLite cache of judge calls (openai judge)")
    parser.add_argument("--scoring", choices=("logprobs", "parse"),
                        help="logprobs: single-token 0-100 trick (OpenAI tokenizers); parse: sample and parse (Qwen, Gemma)")  # fmt: skip
    args = parser.parse_args(argv)
    frame = read_responses(args.responses)
    judge = _judge_from(args)
    scored = score_frame(judge, frame)
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        for record in scored.to_dict(orient="records")
    ]
    write_jsonl(args.out, records)
    summary = {"judge": judge.name, "answers": len(scored)}
    if {"aligned", "coherent"} <= set(judge.metrics):
        has_coherent = scored["coherent"].notna().any()
        summary["em_rate"] = em_rate(scored) if has_coherent else None  # e.g. every reply unparseable
    if (
        "bad_medical_advice" in judge.metrics
        and "domain" in scored.columns
        and (scored["domain"] == "medical").any()
    ):
        summary["narrow_rate"] = narrow_rate(scored)
    if hasattr(judge, "stats"):
        summary["scoring"] = judge.config.scoring
        summary["stats"] = asdict(judge.stats)
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
