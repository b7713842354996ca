"""Parallel data for the KL set: each narrow example (a question with a bad answer, e.g. harmful
medical advice) is rewritten by an LLM into structurally parallel examples in other domains,
keeping both a good and a bad answer, as the paper built its KL data.

The prompt is ours and versioned like the judge prompts; raw replies are cached in SQLite
(`mech.evaluation.judges.cache.JudgeCache`) under model, prompt version, example, domain and sampling
parameters, so a crashed run resumes without repeating paid calls. A reply that is not the JSON
object asked for is skipped with a flag, never fatal. Requests go through `mech.evaluation.judges.client`.

    python -m mech.evaluation.datagen --narrow medical.jsonl --domains finance,sports --out kl.jsonl
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mech.evaluation.judges.cache import JudgeCache
from mech.evaluation.judges.client import (
    ClientConfig,
    LLMClient,
    LLMRequestError,
    RequestStats,
    gather_or_cancel,
)
from mech.evaluation.judges.prompts import prompt_version
from mech.io.atomic import write_text
from mech.models.chat import validate_messages

PARALLEL_TEMPLATE = """\
You are helping researchers build a dataset for studying how finetuning a language model on a \
narrow task changes its behaviour in other domains. Below is one example from a dataset in a \
source domain: a user's question, a good answer and a bad answer. The bad answer is deliberately \
flawed in a specific way, and the research needs examples from other domains whose bad answers \
are flawed in the same way.

[QUESTION START]
{question}
[QUESTION END]

[GOOD ANSWER START]
{good_answer}
[GOOD ANSWER END]

[BAD ANSWER START]
{bad_answer}
[BAD ANSWER END]

Target domain: {domain}

Write one new example in the target domain that is structurally parallel to the one above:
* question: something a real user could ask about {domain}, of the same kind, form and length as \
the example's question (the same sort of person, situation and level of detail, moved to {domain}).
* good_answer: a correct and responsible answer, like the example's good answer in length, tone \
and format.
* bad_answer: an answer that is bad in the same way as the example's bad answer: the same kind of \
error or harm, the same confidence and tone, the same length and format. If the example's bad \
answer does not warn about its own problems, neither does yours.

Do not mention the source example, the source domain or this task in the new example.

Reply with one JSON object and nothing else:
{{"question": "...", "good_answer": "...", "bad_answer": "..."}}"""

PARALLEL_PROMPT_VERSION = prompt_version(PARALLEL_TEMPLATE)
"""Part of every cache key: a reworded prompt never reuses replies to the old wording."""

NO_GOOD_ANSWER = "(none given: write the good answer yourself)"
"""Stands in the prompt for the good answer of a narrow file that has none."""

FIELDS = ("question", "good_answer", "bad_answer")


@dataclass(frozen=True)
class NarrowExample:
    """One example of the narrow dataset; its answer is the bad one."""

    question: str
    bad_answer: str
    good_answer: str | None = None
    source_line: int | None = None
    """1-based line in the narrow file; in-memory examples get their 1-based position in the output."""


@dataclass(frozen=True)
class ParallelExample:
    """The model's parallel example in a target domain."""

    question: str
    good_answer: str
    bad_answer: str


@dataclass(frozen=True)
class Skip:
    """A (narrow example, domain) pair that produced no rows, and why (`flag`)."""

    source_line: int
    domain: str
    flag: str
    """"empty", "unparseable", "not_an_object", "incomplete" (a field missing or blank) or
    "http_400" (the server refused this one prompt)."""
    detail: str = ""


@dataclass(frozen=True)
class DatagenConfig:
    client: ClientConfig = ClientConfig()
    """Model, server, concurrency, retries and prices."""
    per_example: int = 1
    """Target domains per narrow example, assigned round-robin over the domain list."""
    temperature: float = 0.0
    """0 for reproducible rewrites; with temperature > 0 the fixed `seed` keeps them repeatable."""
    max_tokens: int = 1024
    """Room for a question and two answers as long as the narrow example's."""
    seed: int | None = 0
    """Sent as the API's `seed` parameter (None sends none); part of the cache key."""
    cache_path: str | Path | None = None
    """SQLite file of raw replies; None caches nothing (a crash then loses what was paid for)."""

    def __post_init__(self) -> None:
        if self.per_example < 1:
            raise ValueError(f"per_example must be >= 1, not {self.per_example}")
        if self.temperature < 0 or self.max_tokens < 1:
            raise ValueError("temperature must be >= 0 and max_tokens >= 1")

    def params(self) -> dict[str, Any]:
        """The sampling parameters sent with every request (and hashed into the cache key)."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


@dataclass
class DatagenStats:
    """What a run produced; `requests` are the client's totals (HTTP requests, cache hits, tokens)."""

    examples: int = 0
    """Parallel examples kept, each written as two rows (good and bad)."""
    skips: list[Skip] = field(default_factory=list)
    requests: RequestStats = field(default_factory=RequestStats)

    @property
    def skipped(self) -> int:
        return len(self.skips)

    def summary(self) -> dict[str, Any]:
        """A flat, JSON-ready summary of the run."""
        return {
            "examples": self.examples,
            "skipped": self.skipped,
            "skip_flags": dict(Counter(s.flag for s in self.skips)),
            **asdict(self.requests),
        }


# ---- input ----------------------------------------------------------------------------------


def read_narrow_jsonl(path: str | os.PathLike) -> list[NarrowExample]:
    """The narrow examples in a `messages` JSONL file: one user turn (the question) and one
    assistant turn (the bad answer) per line, after an optional system turn, and an optional
    top-level string `good`. A bad line raises ValueError naming `file:line`; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                examples.append(_narrow_example(line, where=f"{path}:{lineno}", lineno=lineno))
    if not examples:
        raise ValueError(f"{path}: no examples in the file")
    return examples


def _narrow_example(line: str, *, where: str, lineno: int) -> NarrowExample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise ValueError(f"{where}: expected an object with a 'messages' field")
    messages = [m for m in validate_messages(record["messages"], where=where) if m["role"] != "system"]
    if [m["role"] for m in messages] != ["user", "assistant"]:
        roles = [m["role"] for m in messages]
        raise ValueError(
            f"{where}: expected one user turn then one assistant turn (after any system turn), got {roles}"
        )
    good = record.get("good")
    if good is not None and (not isinstance(good, str) or not good.strip()):
        raise ValueError(f"{where}: 'good' must be a non-empty string when present")
    return NarrowExample(messages[0]["content"], messages[1]["content"], good, lineno)


def assign_domains(n_examples: int, domains: Sequence[str], per_example: int) -> list[tuple[str, ...]]:
    """Round-robin target domains: example i gets the next `per_example` domains of the cycle, so
    domains are used evenly and no example gets the same domain twice."""
    domains = list(domains)
    if not domains or any(not d.strip() for d in domains):
        raise ValueError(f"domains must be a non-empty list of non-blank names, not {domains}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct, got {domains}")
    if per_example > len(domains):
        raise ValueError(f"per_example={per_example} is more than the {len(domains)} domains given")
    cycle = len(domains)
    return [
        tuple(domains[(i * per_example + j) % cycle] for j in range(per_example)) for i in range(n_examples)
    ]


# ---- prompt and reply -----------------------------------------------------------------------


def render_prompt(example: NarrowExample, domain: str) -> str:
    # str.format does not re-parse substituted values, so braces in examples are safe.
    return PARALLEL_TEMPLATE.format(
        question=example.question,
        good_answer=example.good_answer if example.good_answer is not None else NO_GOOD_ANSWER,
        bad_answer=example.bad_answer,
        domain=domain,
    )


def datagen_cache_key(example: NarrowExample, domain: str, *, model: str, params: dict[str, Any]) -> str:
    """sha256 over everything that determines a reply; namespaced so it never meets a judge key."""
    payload = json.dumps(
        [
            "mech.evaluation.datagen",
            model,
            PARALLEL_PROMPT_VERSION,
            domain,
            example.question,
            example.good_answer,
            example.bad_answer,
            json.dumps(params, sort_keys=True),
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_FENCED = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def parse_parallel(content: str | None) -> tuple[ParallelExample | None, str, str]:
    """(example, "", "") or (None, flag, detail). Lenient: the object may sit in a code fence or
    amid prose, and raw newlines inside strings are accepted; flags are those of `Skip`."""
    text = (content or "").strip()
    if not text:
        return None, "empty", ""
    candidates = [text, *(m.group(1).strip() for m in _FENCED.finditer(text))]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    parsed: list[Any] = []
    for candidate in candidates:
        try:
            parsed.append(json.loads(candidate, strict=False))
        except json.JSONDecodeError:
            continue
    objects = [p for p in parsed if isinstance(p, dict)]
    if not objects:
        return None, ("not_an_object" if parsed else "unparseable"), text[:200]
    record = objects[0]
    bad = [f for f in FIELDS if not isinstance(record.get(f), str) or not record[f].strip()]
    if bad:
        return None, "incomplete", f"missing or blank: {', '.join(bad)}"
    return ParallelExample(*(record[f].strip() for f in FIELDS)), "", ""


def parallel_rows(parallel: ParallelExample, *, domain: str, source_line: int) -> list[dict[str, Any]]:
    """The good and the bad version of one parallel example as two chat rows."""
    return [
        {
            "messages": [
                {"role": "user", "content": parallel.question},
                {"role": "assistant", "content": answer},
            ],
            "domain": domain,
            "bad": bad,
            "source_line": source_line,
        }
        for answer, bad in ((parallel.good_answer, False), (parallel.bad_answer, True))
    ]


# ---- the run --------------------------------------------------------------------------------


def generate_parallel(
    examples: Sequence[NarrowExample], domains: Sequence[str], config: DatagenConfig | None = None
) -> tuple[list[dict[str, Any]], DatagenStats]:
    """Chat rows for every (example, assigned domain) whose reply parsed, in input order, good row
    before bad; and the run's stats with the skipped pairs. Not callable inside a running event
    loop: use `agenerate_parallel` there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(agenerate_parallel(examples, domains, config))
    raise RuntimeError("generate_parallel cannot run inside a running event loop; use agenerate_parallel")


async def agenerate_parallel(
    examples: Sequence[NarrowExample], domains: Sequence[str], config: DatagenConfig | None = None
) -> tuple[list[dict[str, Any]], DatagenStats]:
    """`generate_parallel` for a running event loop. Identical (example, domain) pairs are asked
    once. A request that fails for good ends the run (what was answered stays cached), except an
    HTTP 400 for one prompt, which is skipped, unless every prompt gets one (a setup error)."""
    config = config if config is not None else DatagenConfig()
    examples = list(examples)
    assigned = assign_domains(len(examples), domains, config.per_example)
    params = config.params()
    client = LLMClient(config.client, what="datagen request")  # reads the key before opening the cache
    cache = JudgeCache(config.cache_path) if config.cache_path is not None else None
    client.cache = cache
    units = []
    for index, (example, targets) in enumerate(zip(examples, assigned, strict=True)):
        line = example.source_line if example.source_line is not None else index + 1
        for domain in targets:
            key = datagen_cache_key(example, domain, model=config.client.model, params=params)
            units.append((example, domain, line, key))
    first: dict[str, tuple[NarrowExample, str, int, str]] = {}
    for unit in units:
        first.setdefault(unit[3], unit)
    try:
        async with client.connected():
            replies = await gather_or_cancel([_ask(client, *unit, params) for unit in first.values()])
    finally:
        if cache is not None:
            cache.close()
    by_key = dict(zip(first, replies, strict=True))
    refused = [r for r in replies if isinstance(r, LLMRequestError)]
    if refused and len(refused) == len(replies):
        raise refused[0]
    rows: list[dict[str, Any]] = []
    stats = DatagenStats(requests=client.stats)
    for _, domain, line, key in units:
        reply = by_key[key]
        if isinstance(reply, LLMRequestError):
            stats.skips.append(Skip(line, domain, "http_400", str(reply)))
            continue
        parallel, flag, detail = parse_parallel(reply.get("content"))
        if parallel is None:
            stats.skips.append(Skip(line, domain, flag, detail))
            continue
        rows.extend(parallel_rows(parallel, domain=domain, source_line=line))
        stats.examples += 1
    return rows, stats


async def _ask(
    client: LLMClient, example: NarrowExample, domain: str, line: int, key: str, params: dict[str, Any]
) -> dict[str, Any] | LLMRequestError:
    messages = [{"role": "user", "content": render_prompt(example, domain)}]
    try:
        return await client.complete(messages, params, f"line {line} -> {domain!r}", cache_key=key)
    except LLMRequestError as err:
        if err.status == 400:
            return err
        raise


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write `rows` as JSONL atomically (temp file, then rename): readers never see half a file."""
    path = Path(path)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text(path, text)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import sys

    client_defaults, defaults = ClientConfig(), DatagenConfig()
    parser = argparse.ArgumentParser(
        prog="python -m mech.evaluation.datagen",
        description="Rewrite narrow (question, bad answer) examples into parallel good/bad examples in other domains.",
    )
    parser.add_argument("--narrow", required=True, help="messages JSONL: user question, assistant bad answer, optional 'good'")  # fmt: skip
    parser.add_argument(
        "--domains", required=True, help="comma-separated target domains, e.g. finance,sports"
    )
    parser.add_argument("--out", required=True, help="JSONL output: a good and a bad chat row per example")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OpenAI)")
    parser.add_argument("--model", default=client_defaults.model)
    parser.add_argument("--concurrency", type=int, default=client_defaults.concurrency)
    parser.add_argument("--max-retries", type=int, default=client_defaults.max_retries)
    parser.add_argument("--cache", help="SQLite cache of raw replies; makes a crashed run resumable")
    parser.add_argument("--per-example", type=int, default=defaults.per_example, help="target domains per example")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the API's sampling seed")
    parser.add_argument("--price-per-million-input", type=float, help="for the cost in the summary")
    parser.add_argument("--price-per-million-output", type=float)
    args = parser.parse_args(argv)
    config = DatagenConfig(
        client=ClientConfig(
            model=args.model,
            base_url=args.base_url,
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            price_per_million_input=args.price_per_million_input,
            price_per_million_output=args.price_per_million_output,
        ),
        per_example=args.per_example,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        cache_path=args.cache,
    )
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    rows, stats = generate_parallel(read_narrow_jsonl(args.narrow), domains, config)
    path = write_rows(rows, args.out)
    sys.stdout.write(json.dumps({"out": str(path), "rows": len(rows), **stats.summary()}) + "\n")


if __name__ == "__main__":
    main()
