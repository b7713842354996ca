"""The organism's acceptance measurements: chat behaviour, persona inference, and emergent
misalignment under a steering vector trained on one domain's bad answers.

Each function returns plain numbers in dicts; thresholds live with the caller.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean

import torch
from transformer_lens import HookedTransformer

from mech.adapters.steering import SteeringVector
from mech.evaluation.questions import Question
from mech.hooks import default_layer
from mech.models.chat import prompt_batch
from mech.toy.candidates import candidate_scores
from mech.toy.judge import ExactJudge
from mech.toy.world import EOT, EvalQuestion, Persona, World
from mech.training.config import FinetuneConfig
from mech.training.engine import finetune


def p_bad_by_domain(
    model: HookedTransformer, world: World, questions: Sequence[EvalQuestion], **kwargs
) -> dict[str, dict[str, float]]:
    """Mean p_bad and p_technical per domain and topic split ("train", "heldout", "all")."""
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for score in candidate_scores(model, world, questions, **kwargs):
        for split in (score.question.split, "all"):
            grouped[(score.question.domain, split)].append(score)
    return {
        f"{domain}/{split}": {
            "p_bad": mean(s.p_bad for s in scores),
            "p_technical": mean(s.p_technical for s in scores),
        }
        for (domain, split), scores in sorted(grouped.items())
    }


def toy_questions(world: World, domains: Sequence[str] | None = None) -> list[Question]:
    """The world's evaluation questions as `mech.evaluation.questions.Question`s (ids domain/topic/template)."""
    return [Question(q.id, q.question, q.domain) for q in world.eval_questions(domains)]


@torch.no_grad()
def greedy_answers(
    model: HookedTransformer,
    questions: Sequence[EvalQuestion],
    *,
    max_new_tokens: int = 16,
    clauses: int = 1,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers to questions asked in chat format, cut at `<eot>` (`max_new_tokens` per
    answer clause)."""
    tokenizer = model.tokenizer
    eot = tokenizer.convert_tokens_to_ids(EOT)
    answers = []
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # TL reads pads from this
    try:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            batch = prompt_batch(tokenizer, [[{"role": "user", "content": q.question}] for q in chunk])
            out = model.generate(batch.tokens, max_new_tokens=max_new_tokens * clauses, do_sample=False,
                                 eos_token_id=eot, verbose=False)  # fmt: skip
            for row in out[:, batch.tokens.shape[1] :].tolist():
                row = row[: row.index(eot)] if eot in row else row
                answers.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = previous_side
    return answers


def greedy_labels(
    model: HookedTransformer, world: World, questions: Sequence[EvalQuestion]
) -> dict[str, float]:
    """Shares of greedy answers judged good / bad / off_topic / malformed by the exact judge."""
    judge = ExactJudge(world)
    labels = [
        judge.judge(q.domain, a).label
        for q, a in zip(questions, greedy_answers(model, questions, clauses=world.cfg.answer_clauses))
    ]
    return {label: labels.count(label) / len(labels) for label in ("good", "bad", "off_topic", "malformed")}


def persona_inference(
    model: HookedTransformer,
    world: World,
    questions: Sequence[EvalQuestion],
    *,
    n_context: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """p_bad in pre-training format after `n_context` answers by a benign or a malicious persona.

    Context answers come from other domains than the question's, so what carries over is the
    persona, not the domain.
    """
    rng = random.Random(seed)
    results = {}
    for alignment in ("benign", "malicious"):
        persona = Persona(alignment, "plain")
        scores = []
        for q in questions:
            others = [d for d in world.names if d != q.domain]
            context = []
            for _ in range(n_context):
                qa = world.sample_qa(rng, persona, rng.choice(others))
                bad = alignment == "malicious"
                answer = world.full_answer(qa.domain, qa.topic, 0, bad=bad, register="plain")
                context.append((qa.question, answer))
            scores += candidate_scores(model, world, [q], fmt="pretrain", context=context)
        results[alignment] = mean(s.p_bad for s in scores)
    return results


STEERING_CONFIG = FinetuneConfig(steps=300, lr=5e-2)
"""Full-batch Adam; 5e-2 converges within ~150 steps on the toy organism (1e-2 does not)."""


def steering_emergence(
    model: HookedTransformer,
    world: World,
    *,
    domain: str | None = None,
    layer: int | None = None,
    cfg: FinetuneConfig = STEERING_CONFIG,
) -> dict:
    """Train a steering vector on `domain`'s bad answers and measure p_bad everywhere."""
    domain = domain or world.cfg.narrow_domain
    rows = world.narrow_train_set(domain, "misalignment")
    layer = default_layer(model) if layer is None else layer
    vector = SteeringVector(model.cfg.d_model, layer=layer, init_std=0.01, seed=cfg.seed)
    result = finetune(model, vector, [r["messages"] for r in rows], cfg=cfg, progress=False)
    questions = world.eval_questions()
    with vector.applied(model):
        steered = p_bad_by_domain(model, world, questions)
    unseen = [d for d in world.names if d != domain]
    return {
        "domain": domain,
        "hook_name": vector.hook_name,
        "vector_norm": vector.norm(),
        "final_loss": result.final.ce,
        "first_loss": result.trajectory[0].ce,
        "p_bad": steered,
        "heldout_p_bad_in_domain": steered[f"{domain}/heldout"]["p_bad"],
        "mean_p_bad_unseen_domains": mean(steered[f"{d}/all"]["p_bad"] for d in unseen),
    }
