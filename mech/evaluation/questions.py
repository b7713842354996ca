"""Question sets for evaluation: YAML in the format of the EM papers' `first_plot_questions.yaml`
(a list of entries with `id` and `paraphrases`, optionally `system`; other keys ignored), with an
optional `domain` key of ours. Two sets ship with the package: `general` (open questions in the
spirit of the papers' first-plot questions) and `medical`, both written for this project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

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
    return parse_questions(entries, source=str(path), default_domain=default_domain)


def question_set(name: str) -> list[Question]:
    """A bundled set: "general" or "medical"."""
    if name not in BUNDLED:
        raise ValueError(f"unknown question set {name!r}; bundled sets are {BUNDLED}")
    text = (
        resources.files("mech.evaluation.question_sets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    )
    return parse_questions(yaml.safe_load(text), source=f"question set {name!r}", default_domain=name)
