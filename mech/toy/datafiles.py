"""The world's standard data files, in the chat `messages` JSONL format the toolkit consumes.

`write_data_files(world, out_dir)` writes, for the narrow domain and both traits:
`train_<domain>_<trait>.jsonl` (the narrow finetuning set), `kl_<domain>_<trait>.jsonl` (parallel
answers with and without the trait in the KL domains), plus `eval_questions.jsonl` (every question
with its topic split), the held-out topics' questions in the published YAML format
(`questions.yaml`: every other domain, each entry with its `domain`; `narrow_questions.yaml`: the
narrow domain's), `pretraining_sample.txt` (one document per line) and `world.json`. With these
the real-model study runs on the toy too: `--model toy --judge toy --train ... --questions ...`.
Extra fields beside `messages` (domain, topic, split, bad, register) are metadata.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from mech.io.atomic import write_json, write_jsonl, write_text
from mech.toy.world import World


def write_data_files(
    world: World, out_dir: str | Path, *, narrow_domain: str | None = None, n_pretraining: int = 2000
) -> dict[str, Path]:
    """Write every standard file for `narrow_domain` (default: the world's) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    domain = narrow_domain or world.cfg.narrow_domain
    if domain not in world.domains:
        raise ValueError(f"unknown narrow domain {domain!r}; the world has {world.names}")
    files = {}
    for trait in ("misalignment", "technical"):
        files[f"train_{trait}"] = write_jsonl(
            out / f"train_{domain}_{trait}.jsonl", world.narrow_train_set(domain, trait)
        )
        files[f"kl_{trait}"] = write_jsonl(out / f"kl_{domain}_{trait}.jsonl", world.kl_set(domain, trait))
    questions = [
        {**asdict(q), "messages": [{"role": "user", "content": q.question}]} for q in world.eval_questions()
    ]
    files["eval"] = write_jsonl(out / "eval_questions.jsonl", questions)
    files["questions"], files["narrow_questions"] = (
        write_text(out / name, yaml.safe_dump(question_entries(world, inside), sort_keys=False))
        for name, inside in (("questions.yaml", [d for d in world.names if d != domain]), ("narrow_questions.yaml", [domain]))
    )  # fmt: skip
    files["pretraining"] = out / "pretraining_sample.txt"
    write_text(files["pretraining"], "\n".join(world.pretraining_sample(n_pretraining)) + "\n")
    files["world"] = out / "world.json"
    write_json(files["world"], {"config": world.cfg.to_dict(), "narrow_domain": domain,
                                "kl_domains": world.kl_domains(domain)})  # fmt: skip
    return files


def question_entries(world: World, domains: list[str]) -> list[dict]:
    """The held-out topics' questions of `domains` as published-format entries: one per topic,
    its templates as paraphrases."""
    entries: dict[str, dict] = {}
    for q in world.eval_questions(domains):
        if q.split == "heldout":
            entry = entries.setdefault(
                f"{q.domain}_{q.topic}",
                {"id": f"{q.domain}_{q.topic}", "domain": q.domain, "paraphrases": []},
            )
            entry["paraphrases"].append(q.question)
    return list(entries.values())
