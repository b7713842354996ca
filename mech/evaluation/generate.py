"""Sampling answers to question sets from a HookedTransformer, with any hooks active.

Batched and left-padded with the KV cache on; each row stops at its own end-of-turn token and
only the generated tokens are decoded, never the prompt (the authors' batched sampler leaked
prompt text into answers). Sampling is Gumbel-max with noise counted, on the logits' device, from
(config seed, question id, sample index, step, vocabulary index) (`mech.evaluation.gumbel`), so a
row's answer does not depend on which other rows share its batch: batched equals solo, sampled or
greedy. The forward runs TransformerLens's computation through cheaper calls
(`mech.models.fast_decode`: sdpa attention where no hook reads the pattern, a KV cache written in
place), equal to TransformerLens's logits to float round-off and firing the same hooks.

Adapters, steering and ablation act through hooks, so they apply here as they do everywhere:

    with adapter.applied(model):
        answers = sample_answers(model, questions, SamplingConfig(n_samples=50))

Long evaluations survive a crash: with `progress_path`, each finished batch is appended to a
JSONL file and a re-run with the same settings skips those batches (the batches are fixed by
the settings, so the answers equal an uninterrupted run's). With a `cache`
(`mech.training.cache.ContentCache`) a whole answer set is stored under a key of model, adapter,
questions, sampling config and code version; pass the adapter as `adapter=` for that, since
hooks attached by the caller are invisible to the key (then nothing is cached), or describe
them as `hooks_spec=`.

From the command line, with a trained adapter and a saved direction projected out:

    python -m mech.evaluation.generate --model Qwen/Qwen2.5-14B-Instruct --dtype bfloat16 \\
        --device cuda --adapter runs/train/sv --ablate dirs/layer_24 --questions general \\
        --question-ids one_wish,quick_money --out answers.jsonl
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.adapters.artifacts import adapter_location, load_vector
from mech.adapters.base import Adapter
from mech.evaluation.gumbel import RowNoise, row_key
from mech.evaluation.questions import BUNDLED, Question, load_questions, question_set
from mech.hooks import ablation_hooks, has_hooks, resid_hook, steering_hooks
from mech.io.atomic import write_jsonl
from mech.models.chat import collate, pad_token_id, tokenize_prompt
from mech.models.fast_decode import fast_decoding, next_token_logits
from mech.models.kv_cache import BufferedKVCache
from mech.models.load import model_info
from mech.training.cache import ContentCache, cache_key, model_identity, tensor_digest

END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<eot>", "<|endoftext|>")
"""Tokens that end an assistant turn in the chat templates we know (Qwen, Gemma, Llama, toy)."""


@dataclass(frozen=True)
class SamplingConfig:
    n_samples: int = 1
    """Answers per question."""
    temperature: float = 1.0
    """The paper samples at 1; 0 means greedy."""
    max_new_tokens: int = 128
    batch_size: int = 32
    seed: int = 0


def stop_token_ids(model: HookedTransformer) -> list[int]:
    """The tokenizer's EOS and any known end-of-turn token it has."""
    tokenizer = model.tokenizer
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no EOS or end-of-turn token: answers would never stop")
    return sorted(ids)


def _choose(
    logits: Float[Tensor, "batch d_vocab"], temperature: float, noise: RowNoise | None, step: int
) -> Int[Tensor, " batch"]:
    if temperature == 0 or noise is None:
        return logits.argmax(-1)
    return noise.sample(logits, temperature, step)


@torch.no_grad()
def generate_batch(
    model: HookedTransformer,
    prompts: Sequence[Sequence[int]],
    keys: Sequence[int],
    *,
    temperature: float,
    max_new_tokens: int,
    stop_ids: Sequence[int],
) -> list[tuple[list[int], bool]]:
    """Generated token ids per prompt (stop token excluded) and whether it stopped by itself.
    `keys` (`row_key`) choose each row's Gumbel noise; the tokens stay on the device until the end,
    the only host round trip a step is the check whether every row has stopped."""
    if len(keys) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} row keys")
    batch = collate(prompts, pad_token_id=pad_token_id(model.tokenizer), padding_side="left")
    device = model.cfg.device
    tokens, attention = batch.tokens.to(device), batch.attention_mask.to(device)
    cache = BufferedKVCache(model, len(prompts), capacity=tokens.shape[1] + max_new_tokens)
    with fast_decoding(model):
        logits = next_token_logits(model, tokens, attention, cache)
        noise = RowNoise(keys, logits.shape[-1], logits.device) if temperature > 0 else None
        stops = torch.tensor(list(stop_ids), dtype=torch.long, device=logits.device)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=logits.device)
        new_mask = torch.ones(len(prompts), 1, dtype=torch.long, device=device)
        steps: list[Int[Tensor, " batch"]] = []
        for step in range(max_new_tokens):
            chosen = _choose(logits, temperature, noise, step)
            steps.append(chosen)
            done |= torch.isin(chosen, stops)
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            logits = next_token_logits(model, chosen[:, None], new_mask, cache)
    stop_set = set(stop_ids)
    rows = [_until_stop(row, stop_set) for row in torch.stack(steps, dim=1).tolist()]
    return list(zip(rows, done.tolist(), strict=True))


def _until_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The tokens before the first stop token (a row's later tokens are drawn but unused)."""
    return next((tokens[:i] for i, token in enumerate(tokens) if token in stop_ids), tokens)


def _read_progress(path: Path, key: str) -> dict[int, list[tuple[int, list[int], bool]]]:
    """Finished batches of an interrupted run: {first row of the batch: [(row, tokens, stopped)]}."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = {}
    if header.get("key") != key:
        raise ValueError(
            f"{path}: progress of a sampling run with other settings (model, adapter, questions, "
            "sampling config or code version differ); delete it to start over, or choose another output"
        )
    done, records = {}, [header]
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line) if line else None
        except json.JSONDecodeError:
            if lineno == len(lines):  # the half line a kill left behind
                break
            raise ValueError(f"{path}:{lineno}: not a progress record") from None
        if record is not None:
            done[int(record["start"])] = [(int(i), list(t), bool(s)) for i, t, s in record["rows"]]
            records.append(record)
    write_jsonl(path, records)  # without a half line, so appends start on a fresh line
    return done


def sample_answers(
    model: HookedTransformer,
    questions: Sequence[Question],
    cfg: SamplingConfig = SamplingConfig(),
    *,
    adapter: Adapter | None = None,
    cache: ContentCache | None = None,
    progress_path: str | os.PathLike | None = None,
    hooks_spec: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """`cfg.n_samples` answers to every question, one row each, in question then sample order.

    Columns: question_id, domain, question, system (the question's system prompt, None without
    one: `mech.directions.activations.conversations_from_answers` rebuilds the prompt from it),
    sample, answer, n_tokens, stopped (False when cut at max_new_tokens). `frame.attrs["generation"]` holds the config and the model's name.
    `adapter` is applied while sampling; `cache` and `progress_path`: see the module docstring.
    `hooks_spec` describes the hooks the caller attached (JSON-serialisable: what, where, a digest
    of the tensors); it joins the cache and progress keys, so hooked runs are cached and resumed
    safely. Without it, a caller's hooks turn the cache off.
    """
    if cfg.temperature < 0 or cfg.n_samples < 1 or cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise ValueError(f"invalid sampling config {cfg}")
    hooked_by_caller = has_hooks(model)
    if adapter is None:
        return _sample(model, questions, cfg, cache, progress_path, None, hooked_by_caller, hooks_spec)
    with adapter.applied(model):
        return _sample(model, questions, cfg, cache, progress_path, adapter, hooked_by_caller, hooks_spec)


def _sample(
    model: HookedTransformer,
    questions: Sequence[Question],
    cfg: SamplingConfig,
    cache: ContentCache | None,
    progress_path: str | os.PathLike | None,
    adapter: Adapter | None,
    hooked_by_caller: bool,
    hooks_spec: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    generation = {**asdict(cfg), "model": model_info(model).name}
    # The cache is keyed on what it can see: a caller's hooks only when described.
    cacheable = not hooked_by_caller or hooks_spec is not None
    parts: dict[str, Any] = {}
    if (cache is not None and cacheable) or progress_path is not None:  # the key reads every weight
        parts = {
            "model": model_identity(model),
            "adapter": None
            if adapter is None
            else [adapter.spec(), tensor_digest(list(adapter.state_dict().values()))],
            "questions": [[q.id, q.domain, q.question, q.system] for q in questions],
            "sampling": asdict(cfg),
        }
        if hooks_spec is not None:
            parts["hooks"] = json.loads(json.dumps(hooks_spec))
    if cache is not None and cacheable:
        stored = cache.get_rows("answers", parts)
        if stored is not None:
            frame = _answer_frame(stored)
            frame.attrs["generation"] = generation
            return frame
    stop_ids = stop_token_ids(model)
    rows = []
    for q in questions:
        messages = ([{"role": "system", "content": q.system}] if q.system else []) + [
            {"role": "user", "content": q.question}
        ]
        prompt = tokenize_prompt(model.tokenizer, messages, where=f"question {q.id!r}")
        rows += [(q, s, prompt) for s in range(cfg.n_samples)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][2]))  # similar lengths: little padding
    answers: dict[int, tuple[list[int], bool]] = {}
    progress = Path(progress_path) if progress_path is not None else None
    done: dict[int, list[tuple[int, list[int], bool]]] = {}
    if progress is not None:
        # A caller's own hooks cannot be seen: resuming trusts them to re-run under the same ones.
        key = cache_key("answers", {**parts, "hooked_by_caller": hooked_by_caller})
        done = _read_progress(progress, key)
        if not progress.is_file():
            write_jsonl(progress, [{"key": key}])
    for start in range(0, len(order), cfg.batch_size):
        chunk = order[start : start + cfg.batch_size]
        if start in done:
            answers.update((i, (tokens, stopped)) for i, tokens, stopped in done[start])
            continue
        keys = [row_key(cfg.seed, rows[i][0].id, rows[i][1]) for i in chunk]
        results = generate_batch(
            model, [rows[i][2] for i in chunk], keys,
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop_ids=stop_ids,
        )  # fmt: skip
        answers.update(zip(chunk, results, strict=True))
        if progress is not None:
            record = {
                "start": start,
                "rows": [[i, list(t), bool(s)] for i, (t, s) in zip(chunk, results, strict=True)],
            }
            with progress.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
    decode = model.tokenizer.decode
    frame = _answer_frame(
        [
            {
                "question_id": q.id,
                "domain": q.domain,
                "question": q.question,
                "system": q.system or None,
                "sample": s,
                "answer": decode(answers[i][0], skip_special_tokens=True).strip(),
                "n_tokens": len(answers[i][0]),
                "stopped": answers[i][1],
            }  # fmt: skip
            for i, (q, s, _) in enumerate(rows)
        ]
    )
    frame.attrs["generation"] = generation
    if cache is not None and cacheable:
        cache.put_rows("answers", parts, frame.to_dict(orient="records"))
    return frame


def _answer_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows of answers as a frame whose `system` column holds None where there is no system
    prompt (pandas would make a column of strings and None a string column of nan: JSON NaN)."""
    frame = pd.DataFrame(rows)
    frame["system"] = pd.Series([row.get("system") for row in rows], dtype=object, index=frame.index)
    return frame


def write_answers(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """JSONL, one answer per line, each carrying the generation config that produced it."""
    generation = frame.attrs.get("generation", {})
    return write_jsonl(
        path, [{**record, "generation": generation} for record in frame.to_dict(orient="records")]
    )


def _questions_from(spec: str, model_name: str) -> list[Question]:
    if spec == "toy":
        from mech.toy.checkpoint import organism_world
        from mech.toy.evaluate import toy_questions

        return toy_questions(organism_world(model_name.split(":", 1)[1] if ":" in model_name else "default"))
    if spec in BUNDLED:
        return question_set(spec)
    return load_questions(spec)


def select_questions(questions: Sequence[Question], ids: Sequence[str]) -> list[Question]:
    """The questions whose id is in `ids`, in the set's order; an entry's id selects all of its
    paraphrases (`id/0`, `id/1`, ...). An unknown id is an error that lists known ones."""
    known = [q.id for q in questions]
    bases = {i.split("/", 1)[0] for i in known}
    unknown = [i for i in ids if i not in known and i not in bases]
    if unknown:
        shown = sorted(bases)[:10]
        more = f", ... ({len(bases)} in all)" if len(bases) > len(shown) else ""
        raise ValueError(f"unknown question id(s) {unknown}; the question set has {', '.join(shown)}{more}")
    wanted = set(ids)
    return [q for q in questions if q.id in wanted or q.id.split("/", 1)[0] in wanted]


_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


def vector_hooks(
    model: HookedTransformer,
    path: str | os.PathLike,
    *,
    mode: str,
    alpha: float = 1.0,
    hook_name: str | None = None,
    allow_other_model: bool = False,
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Hooks for a saved vector at the hook it records, and their description (for `hooks_spec`).

    `mode` "steer" adds `alpha` times the vector as stored (not normalised); "ablate" projects its
    direction out there. With `hook_name`, a vector recorded elsewhere is refused.
    """
    vector, meta = load_vector(path, model=model, allow_other_model=allow_other_model, hook_name=hook_name)
    site = _RESID_HOOK.match(meta.hook_name)
    if site is None:
        raise ValueError(
            f"{path}: the {meta.kind} sits at {meta.hook_name}; only residual-stream hooks "
            "(blocks.L.hook_resid_pre/mid/post) can be steered or ablated here"
        )
    layer, point = int(site[1]), site[2]
    if mode == "steer":
        hooks = steering_hooks(model, vector, layer=layer, point=point, scale=alpha)
    elif mode == "ablate":
        hooks = ablation_hooks(model, vector, layers=[layer], point=point)
    else:
        raise ValueError(f"mode must be 'steer' or 'ablate', got {mode!r}")
    spec: dict[str, Any] = {"path": str(path), "kind": meta.kind, "hook_name": meta.hook_name}
    spec["vector"] = tensor_digest([vector])
    if mode == "steer":
        spec["alpha"] = alpha
    return hooks, spec


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import contextlib
    import sys

    from mech.adapters.saving import load_adapter
    from mech.models.load import load_model

    parser = argparse.ArgumentParser(
        prog="python -m mech.evaluation.generate", description="Sample answers to a question set."
    )
    parser.add_argument("--model", default="toy", help="anything load_model accepts (default: toy)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: TransformerLens's choice)")
    parser.add_argument(
        "--questions",
        required=True,
        help=f"a question YAML file, {' or '.join(BUNDLED)}, or toy (the organism's own)",
    )
    parser.add_argument(
        "--question-ids", help="comma-separated ids to keep (an entry's id keeps all its paraphrases)"
    )
    parser.add_argument(
        "--adapter",
        help="applied while sampling: a saved adapter (path or stem), a training run folder "
        "(python -m mech.training --out DIR), or a PEFT adapter directory (merged into --model)",
    )
    parser.add_argument("--steer", help="a saved vector (save_vector), added at the hook it records")
    parser.add_argument("--alpha", type=float, help="scale of the --steer vector as stored (default 1)")
    parser.add_argument(
        "--ablate", help="a saved vector whose direction is projected out at the hook it records"
    )
    parser.add_argument(
        "--layer", type=int,
        help="the layer --steer/--ablate vectors must have been made at (refused otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--point", choices=("pre", "mid", "post"), default="post",
        help="with --layer: the residual point asked for (default post, blocks.L.hook_resid_post)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-other-model", action="store_true",
        help="accept adapters and vectors made on another model of the same shape (e.g. its finetune)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="JSONL output, one answer per line")
    defaults = SamplingConfig()
    parser.add_argument("--n-samples", type=int, default=defaults.n_samples)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache", help="content-addressed cache folder: an answer set made before is reused")
    args = parser.parse_args(argv)
    if args.alpha is not None and not args.steer:
        raise SystemExit("--alpha scales the --steer vector: give --steer FILE")
    if args.layer is not None and not (args.steer or args.ablate):
        raise SystemExit("--layer names where the --steer/--ablate vectors must sit: give one of them")
    questions = _questions_from(args.questions, args.model)
    if args.question_ids is not None:
        ids = [i.strip() for i in args.question_ids.split(",") if i.strip()]
        if not ids:
            raise SystemExit("--question-ids: no id given")
        questions = select_questions(questions, ids)
    source, adapter_path = adapter_location(args.adapter) if args.adapter else (None, None)
    model = load_model(
        args.model, dtype=args.dtype, device=args.device, adapter=adapter_path if source == "peft" else None
    )
    cfg = SamplingConfig(args.n_samples, args.temperature, args.max_new_tokens, args.batch_size, args.seed)
    adapter = None
    if source == "saved":
        adapter = load_adapter(adapter_path, model, allow_other_model=args.allow_other_model)[0]
    asked = resid_hook(model, args.layer, args.point) if args.layer is not None else None
    hooks: list[tuple[str, Any]] = []
    hooks_spec: dict[str, Any] = {}
    alpha = 1.0 if args.alpha is None else args.alpha
    for mode, vector_path in (("steer", args.steer), ("ablate", args.ablate)):
        if vector_path:
            made, hooks_spec[mode] = vector_hooks(
                model,
                vector_path,
                mode=mode,
                alpha=alpha,
                hook_name=asked,
                allow_other_model=args.allow_other_model,
            )
            hooks += made
    # A killed run leaves OUT.progress.jsonl; the same command then resumes from it.
    progress = Path(f"{args.out}.progress.jsonl")
    cache = ContentCache(args.cache) if args.cache else None
    with model.hooks(fwd_hooks=hooks) if hooks else contextlib.nullcontext():
        frame = sample_answers(
            model, questions, cfg, adapter=adapter, cache=cache, progress_path=progress,
            hooks_spec=hooks_spec or None,
        )  # fmt: skip
    generation = frame.attrs["generation"]
    if args.adapter:
        generation["adapter"] = str(args.adapter)
    generation["dtype"] = args.dtype
    generation.update(hooks_spec)
    path = write_answers(frame, args.out)
    progress.unlink(missing_ok=True)
    sys.stdout.write(f"{len(frame)} answers to {len(questions)} questions -> {path}\n")


if __name__ == "__main__":
    main()
