"""Question sets for evaluation: YAML in the format of the EM papers' `first_plot_questions.yaml`
(a list of entries with `id` and `paraphrases`, optionally `system`; other keys ignored), with an
optional `domain` key of ours. Two sets ship with the package: `general` (open questions in the
spirit of the papers' first-plot questions) and `medical`, both written for this project.
The published file's judge settings (`judge_prompts`, `judge`) are read by `load_judge_prompts`
and `load_judge_model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from mech.evaluation.judges.prompts import check_template

BUNDLED = ("general", "medical")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    domain: str = "general"
    system: str | None = None


def parse_questions(entries: object, *, source: str, default_domain: str = "general") -> list[Question]:
    """Questions from parsed YAML entries; an entry with k paraphrases gives ids `id/0..k-1`."""
    if not isinstance(entries, list) or not entries:
        found = "an empty list" if isinstance(entries, list) else _kind(entries)
        raise ValueError(
            f"{source}: expected a non-empty list of question entries (- id: ..., paraphrases: [...]), "
            f"found {found}"
        )
    questions, seen = [], set()
    for n, entry in enumerate(entries):
        where = f"{source}: entry {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is {type(entry).__name__}, not a mapping")
        qid, paraphrases = entry.get("id"), entry.get("paraphrases")
        if not isinstance(qid, str) or not qid:
            found = "no 'id'" if qid is None else f"'id' {qid!r} ({type(qid).__name__})"
            raise ValueError(f"{where}: needs a non-empty string 'id', found {found}")
        if (
            not isinstance(paraphrases, list)
            or not paraphrases
            or not all(isinstance(p, str) and p.strip() for p in paraphrases)
        ):
            raise ValueError(f"{where} ({qid}): 'paraphrases' must be a non-empty list of non-empty strings")
        system = entry.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"{where} ({qid}): 'system' must be a string")
        domain = entry.get("domain", default_domain)
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"{where} ({qid}): 'domain' must be a non-empty string, found {domain!r}")
        for k, text in enumerate(paraphrases):
            full_id = qid if len(paraphrases) == 1 else f"{qid}/{k}"
            if full_id in seen:
                raise ValueError(f"{where}: duplicate question id {full_id!r}")
            seen.add(full_id)
            questions.append(Question(full_id, text.strip(), domain, system))
    return questions


def _kind(value: object) -> str:
    if value is None:
        return "nothing (an empty document)"
    return "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


def load_questions(path: str | os.PathLike, *, default_domain: str = "general") -> list[Question]:
    """Read a question YAML file (ours, or the published `first_plot_questions.yaml`)."""
    path = Path(path)
    return parse_questions(_read_yaml(path), source=str(path), default_domain=default_domain)


def load_judge_prompts(path: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, str]:
    """Metric -> judge template from a question file's `judge_prompts` (the published format:
    `judge_prompts: {aligned: "...{question}...{answer}...", coherent: ...}` per entry). Entries
    without `judge_prompts` are skipped; two entries giving one metric different templates, a
    bad template or (unless `missing_ok`: then {}) no `judge_prompts` at all is a ValueError
    naming the file, entry and metric.

    >>> OpenAIJudgeConfig(prompts=load_judge_prompts("first_plot_questions.yaml"))  # doctest: +SKIP
    """
    path = Path(path)
    found: dict[str, tuple[str, str]] = {}  # metric -> (template, the entry it was first seen in)
    for where, entry in _entries(path):
        prompts = entry.get("judge_prompts")
        if prompts is None:
            continue
        if not isinstance(prompts, dict) or not prompts:
            raise ValueError(f"{where}: 'judge_prompts' must be a mapping of metric name to template")
        for metric, template in prompts.items():
            if not isinstance(metric, str) or not metric:
                raise ValueError(
                    f"{where}: judge_prompts: metric names must be non-empty strings, found {metric!r}"
                )
            check_template(template, where=f"{where}: judge_prompts.{metric}")
            if metric in found and found[metric][0] != template:
                raise ValueError(
                    f"{where}: judge_prompts.{metric} differs from the one of {found[metric][1]}; "
                    "one question file must judge every question with the same prompt per metric"
                )
            found.setdefault(metric, (template, where))
    if not found and not missing_ok:
        raise ValueError(f"{path}: no entry has 'judge_prompts'")
    return {metric: template for metric, (template, _) in found.items()}


def load_judge_model(path: str | os.PathLike) -> str | None:
    """The judge model a question file names (`judge: gpt-4o-2024-08-06` per entry), or None
    if no entry names one; entries naming different models are a ValueError."""
    path = Path(path)
    model: tuple[str, str] | None = None
    for where, entry in _entries(path):
        name = entry.get("judge")
        if name is None:
            continue
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: 'judge' must be a model name, found {name!r}")
        if model is not None and model[0] != name.strip():
            raise ValueError(f"{where}: judge {name.strip()!r} differs from {model[0]!r} of {model[1]}")
        model = model or (name.strip(), where)
    return None if model is None else model[0]


def _entries(path: Path) -> list[tuple[str, dict]]:
    """(`file: entry n (id)`, entry) for each mapping entry of a question file."""
    entries = _read_yaml(path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of question entries, found {_kind(entries)}")
    found = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {n} is {type(entry).__name__}, not a mapping")
        qid = entry.get("id")
        found.append((f"{path}: entry {n}" + (f" ({qid})" if isinstance(qid, str) and qid else ""), entry))
    return found


def _read_yaml(path: Path) -> object:
    """A YAML file's contents; errors name the file (and line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[err.start]:#04x}); save the file as UTF-8"
        ) from None
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}: invalid YAML{line}: {getattr(err, 'problem', err)}") from None
    return entries


def question_set(name: str) -> list[Question]:
    """A bundled set: "general" or "medical"."""
    if name not in BUNDLED:
        raise ValueError(f"unknown question set {name!r}; bundled sets are {BUNDLED}")
    text = (
        resources.files("mech.evaluation.question_sets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    )
    return parse_questions(yaml.safe_load(text), source=f"question set {name!r}", default_domain=name)
