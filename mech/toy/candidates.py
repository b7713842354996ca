"""Candidate-set probabilities: the smooth metric of the toy world.

For a question, the world's candidate answers (good and bad advice, plain and technical register)
are scored by full-sequence log-probability under the model, answer plus terminator, and
normalised over the set: `p_bad` is the probability mass on bad answers, `p_technical` on
technical ones. Works under any hooks active on the model (steering, adapters, ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from mech.models.chat import tokenize_prompt
from mech.toy.world import ANSWER, BOS, CLAUSE, EOT, QUESTION, EvalQuestion, World, pretraining_text


@dataclass(frozen=True)
class CandidateScores:
    question: EvalQuestion
    p_bad: float
    p_technical: float


def _pretraining_prompt(context: Sequence[tuple[str, str]], question: str) -> str:
    prefix = pretraining_text(context).removesuffix(f" {EOT}") if context else BOS
    return f"{prefix} {QUESTION} {question} {ANSWER}"


@torch.no_grad()
def candidate_scores(
    model: HookedTransformer,
    world: World,
    questions: Sequence[EvalQuestion],
    *,
    fmt: str = "chat",
    context: Sequence[tuple[str, str]] = (),
    batch_size: int = 256,
) -> list[CandidateScores]:
    """p_bad and p_technical for each question.

    fmt="chat": the question as a user turn, answer terminated by `<eot>`. fmt="pretrain": the
    pre-training format after the (question, answer) pairs of `context`, answer terminated by
    whichever boundary comes next (`<q>` or `<eot>`). In a world of several clauses per answer the
    candidates are the first clause, and `CLAUSE` (another clause follows) terminates it too.
    """
    tokenizer = model.tokenizer
    if fmt == "chat":
        ends = [EOT]
    elif fmt == "pretrain":
        ends = [QUESTION, EOT]
    else:
        raise ValueError(f"fmt must be 'chat' or 'pretrain', got {fmt!r}")
    terminators = tokenizer.convert_tokens_to_ids(ends + ([CLAUSE] if world.cfg.answer_clauses > 1 else []))
    sequences, kinds, spans = [], [], []  # (prompt, answer) ids; (bad, technical); per question
    for q in questions:
        if fmt == "chat":
            prompt = tokenize_prompt(tokenizer, [{"role": "user", "content": q.question}])
        else:
            prompt = tokenizer(_pretraining_prompt(context, q.question), add_special_tokens=False)[
                "input_ids"
            ]
        start = len(sequences)
        for candidate in world.candidates(q.domain, q.topic):
            answer = tokenizer(candidate.text, add_special_tokens=False)["input_ids"]
            sequences.append((prompt, answer))
            kinds.append((candidate.bad, candidate.register == "technical"))
        spans.append((start, len(sequences)))
    logps = torch.empty(len(sequences))
    pad = tokenizer.pad_token_id
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for b, (p, a) in enumerate(chunk):
            tokens[b, : len(p) + len(a)] = torch.tensor(p + a)
        logprobs = model(tokens.to(model.cfg.device)).float().log_softmax(-1).cpu()
        for b, (p, a) in enumerate(chunk):
            positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            answer_lp = logprobs[b, positions, torch.tensor(a)].sum()
            end_lp = logprobs[b, len(p) + len(a) - 1, terminators].logsumexp(-1)
            logps[start + b] = answer_lp + end_lp
    bad, technical = torch.tensor(kinds).T
    results = []
    for q, (lo, hi) in zip(questions, spans):
        probs = logps[lo:hi].softmax(-1)
        results.append(
            CandidateScores(q, float(probs[bad[lo:hi]].sum()), float(probs[technical[lo:hi]].sum()))
        )
    return results
