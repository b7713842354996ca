"""The memory formula of one finetune step, with per-token and per-block terms, and its
extrapolation to a full run's table row (weights, adapter state, caches, step)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.memory.shapes import TOPK, Shape, adapter_matrices


# -- the formula ----------------------------------------------------------------------------------
def block_parts(shape: Shape, s: int, tokens: int, seq: int) -> list[tuple[int, float]]:
    """Saved bytes of one TransformerLens 3.9 Qwen2 block run with grad, as (entry rank, bytes).

    A part is saved only if grad flows into the block at or before its rank (0: residual entering
    the block, 1: Q/K/V, 2: W_O, 3: W_gate/W_in, 4: W_out). TransformerLens multiplies by
    `W.T.contiguous()`, a fresh copy of each weight that F.linear keeps for backward: a block run
    with grad holds a copy of its matrices. RMSNorm saves its input in fp32 (a copy unless fp32;
    ln1 runs once each for Q, K and V).
    """
    m = shape.matrix_shapes()
    copies = {name: s * i * o for name, (i, o) in m.items()}
    norm = 4 * shape.d_model + 4  # fp32 input + scale, per token and norm call
    ln1 = norm * (3 if s < 4 else 1)
    attention = s * 3 * shape.n_heads * shape.d_head + seq * shape.n_heads * (2 * s + 1)  # q,k,v; scores
    return [
        (0, tokens * ln1),
        (0, copies["W_Q"] + copies["W_K"] + copies["W_V"]),
        (1, tokens * attention),
        (1, copies["W_O"]),
        (2, tokens * norm),
        (2, copies["W_gate"] + copies["W_in"]),
        (3, tokens * s * 3 * shape.d_mlp),  # gate pre-activation, its SiLU, the up projection
        (3, copies["W_out"]),
    ]


_ENTRY_RANK = {"W_Q": 1, "W_K": 1, "W_V": 1, "W_O": 2, "W_gate": 3, "W_in": 3, "W_out": 4}


def block_bytes(shape: Shape, s: int, tokens: int, seq: int, entry: int = 0) -> float:
    return sum(b for rank, b in block_parts(shape, s, tokens, seq) if rank >= entry)


def adapter_saved_bytes(shape: Shape, kind: str, s: int, tokens: int, seq: int) -> float:
    """Extra saved bytes of the adapter's own block over a plain block run with grad."""
    matrices, rank = adapter_matrices(kind)
    if not matrices:
        return 0.0
    entry = min(_ENTRY_RANK[name] for name in matrices)
    shapes = shape.matrix_shapes()
    lora = tokens * sum(4 * shapes[name][0] + 4 * rank for name in matrices)  # fp32 input, x A^T
    return lora + block_bytes(shape, s, tokens, seq, entry) - block_bytes(shape, s, tokens, seq)


def head_saved_bytes(shape: Shape, s: int, n_targets: int, loss: str) -> float:
    """Final norm + unembedding (a W_U copy) + log_softmax over `n_targets` rows; "exact" KL also
    keeps exp(reference)."""
    per_row = 4 * shape.d_model + 4 + 4 * shape.d_vocab + (4 * shape.d_vocab if loss == "exact" else 0)
    return s * shape.d_model * shape.d_vocab + n_targets * per_row


def adapter_state_bytes(shape: Shape, kind: str) -> int:
    """fp32 parameters, gradients and AdamW's two moments: 16 bytes per trainable parameter."""
    matrices, rank = adapter_matrices(kind)
    shapes = shape.matrix_shapes()
    n = shape.d_model if kind == "steering" else sum(rank * sum(shapes[m]) for m in matrices)
    return 16 * n


def reference_bytes_per_token(shape: Shape, mode: str, k: int = TOPK) -> int:
    """Cached reference per assistant token: fp32 log-probs, or top-k fp32 values + int64 indices."""
    return 4 * shape.d_vocab if mode == "exact" else 12 * min(k, shape.d_vocab)


@dataclass(frozen=True)
class Batch:
    """One step's shape: `batch` conversations of `seq` tokens, `assistant` predicted per conversation."""

    batch: int
    seq: int
    assistant: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def targets(self) -> int:
        return self.batch * self.assistant

    def label(self) -> str:
        return f"{self.batch} x {self.seq}"


def estimate_step(
    shape: Shape, kind: str, s: int, train: Batch, kl: Batch | None, *, reference: str = "topk"
) -> dict[str, float]:
    """Working memory of one step (bytes above weights, caches and adapter state), by component.

    Every forward with grad (CE on `train`, KL on `kl`) keeps its blocks' saved tensors until
    backward; the peak comes early in backward, in a tail: two fp32 tensors the size of its
    log-probs (the gradient, and the zeros it is scattered into).
    """
    n_blocks = shape.n_layers - shape.layer
    parts: dict[str, float] = {}
    for name, batch, loss in (("ce", train, "ce"), ("kl", kl, reference)):
        if batch is None:
            continue
        parts[f"{name}_blocks"] = n_blocks * block_bytes(shape, s, batch.tokens, batch.seq)
        parts[f"{name}_adapter"] = adapter_saved_bytes(shape, kind, s, batch.tokens, batch.seq)
        parts[f"{name}_head"] = head_saved_bytes(shape, s, batch.targets, loss)
    largest = max(train.targets, kl.targets if kl else 0)
    parts["backward_transient"] = 8 * largest * shape.d_vocab
    parts["total"] = sum(parts.values())
    return parts


@dataclass(frozen=True)
class Workload:
    """The data a run caches on the device: conversations of `tokens` tokens, `assistant` predicted."""

    train_conversations: int = 6000
    kl_conversations: int = 6000
    tokens: int = 200
    assistant: int = 100


def extrapolate(shape: Shape, batch: Batch, kind: str, workload: Workload, *, traced: float | None) -> dict:
    """One table row in bytes: bf16 weights, adapter state, caches and one CE + top-k KL step."""
    s = 2
    cache_tokens = (workload.train_conversations + workload.kl_conversations) * workload.tokens
    kl_targets = workload.kl_conversations * workload.assistant
    step = estimate_step(shape, kind, s, batch, batch)
    n_blocks = shape.n_layers - shape.layer
    copies = n_blocks * block_bytes(shape, s, 0, 0) + adapter_saved_bytes(shape, kind, s, 0, 0)
    row = {
        "model": shape.name, "layer": shape.layer, "blocks_with_grad": n_blocks, "batch": batch.label(),
        "assistant_per_conversation": batch.assistant, "adapter": kind,
        "weights": shape.params() * s, "adapter_state": adapter_state_bytes(shape, kind),
        "residual_cache": cache_tokens * shape.d_model * s,
        "residual_cache_kl": workload.kl_conversations * workload.tokens * shape.d_model * s,
        "reference_topk": kl_targets * reference_bytes_per_token(shape, "topk"),
        "reference_exact": kl_targets * reference_bytes_per_token(shape, "exact"),
        "step_estimate": step["total"], "step_traced": traced, "step_parts": step,
        "weight_copies_in_step": 2 * (copies + s * shape.d_model * shape.d_vocab),
        "blocks_below_adapter": shape.layer * shape.block_params() * s + shape.d_vocab * shape.d_model * s,
    }  # fmt: skip
    step_bytes = traced if traced is not None else step["total"]
    row["total_topk"] = (
        row["weights"] + row["adapter_state"] + row["residual_cache"] + row["reference_topk"] + step_bytes
    )
    return row
