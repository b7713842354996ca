"""The world's standard data files, in the chat `messages` JSONL format the toolkit consumes.

`write_data_files(world, out_dir)` writes, for the narrow domain and both traits:
`train_<domain>_<trait>.jsonl` (the narrow finetuning set), `kl_<domain>_<trait>.jsonl` (parallel
answers with and without the trait in the KL domains), plus `eval_questions.jsonl` (every question
with its topic split), `pretraining_sample.txt` (one document per line) and `world.json`.
Extra fields beside `messages` (domain, topic, split, bad, register) are metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mech.toy.world import World


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


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
        files[f"train_{trait}"] = _write_jsonl(
            out / f"train_{domain}_{trait}.jsonl", world.narrow_train_set(domain, trait)
        )
        files[f"kl_{trait}"] = _write_jsonl(out / f"kl_{domain}_{trait}.jsonl", world.kl_set(domain, trait))
    questions = [
        {**asdict(q), "messages": [{"role": "user", "content": q.question}]} for q in world.eval_questions()
    ]
    files["eval"] = _write_jsonl(out / "eval_questions.jsonl", questions)
    files["pretraining"] = out / "pretraining_sample.txt"
    files["pretraining"].write_text("\n".join(world.pretraining_sample(n_pretraining)) + "\n")
    files["world"] = out / "world.json"
    files["world"].write_text(json.dumps({"config": world.cfg.to_dict(), "narrow_domain": domain,
                                          "kl_domains": world.kl_domains(domain)}, indent=2))  # fmt: skip
    return files
