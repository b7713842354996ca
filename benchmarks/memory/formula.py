"""The memory formula of one finetune step, with per-token and per-block terms, and its
extrapolation to a full run's table row (weights, adapter state, caches, step)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.memory.shapes import TOPK, Shape, adapter_matrices


# -- the formula ----------------------------------------------------------------------------------
def block_parts(shape: Shape, s: int, tokens: int, seq: int) -> list[tuple[int, float]]:
    """Saved bytes of one TransformerLens 3.9 Qwen2 block run with grad, as (entry rank, bytes).

    A part is saved only if grad flows into the block at or before its rank (0: residual entering
    the block, 1: Q/K/V, 2: W_O, 3: W_gate/W_in, 4: W_out). No weight is saved: the engine runs
    its forwards under `mech.training.frozen_weights.copy_free_weights`, so TransformerLens's
    `W.T.contiguous()` copies are remade in backward (`weight_copy_bytes`: what they cost before).
    RMSNorm saves its input in fp32 (a copy unless fp32; ln1 runs once each for Q, K and V).
    """
    norm = 4 * shape.d_model + 4  # fp32 input + scale, per token and norm call
    ln1 = norm * (3 if s < 4 else 1)
    attention = s * 3 * shape.n_heads * shape.d_head + seq * shape.n_heads * (2 * s + 1)  # q,k,v; scores
    return [
        (0, tokens * ln1),
        (1, tokens * attention),
        (2, tokens * norm),
        (3, tokens * s * 3 * shape.d_mlp),  # gate pre-activation, its SiLU, the up projection
    ]


def weight_copy_bytes(shape: Shape, s: int, entry: int = 0) -> int:
    """The copies of a block's matrices that TransformerLens's F.linear calls would keep for
    backward without `copy_free_weights` (those at or after rank `entry`)."""
    rank = {"W_Q": 0, "W_K": 0, "W_V": 0, "W_O": 1, "W_gate": 2, "W_in": 2, "W_out": 3}
    return sum(s * i * o for name, (i, o) in shape.matrix_shapes().items() if rank[name] >= entry)


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


def head_saved_bytes(shape: Shape, n_targets: int, loss: str) -> float:
    """Final norm + unembedding + log_softmax over `n_targets` rows; "exact" KL also keeps
    exp(reference). (Without `copy_free_weights` each call would keep a W_U copy as well.)"""
    per_row = 4 * shape.d_model + 4 + 4 * shape.d_vocab + (4 * shape.d_vocab if loss == "exact" else 0)
    return n_targets * per_row


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
    backward; the peak adds `peak_transient` to them.
    """
    n_blocks = shape.n_layers - shape.layer
    parts: dict[str, float] = {}
    for name, batch, loss in (("ce", train, "ce"), ("kl", kl, reference)):
        if batch is None:
            continue
        parts[f"{name}_blocks"] = n_blocks * block_bytes(shape, s, batch.tokens, batch.seq)
        parts[f"{name}_adapter"] = adapter_saved_bytes(shape, kind, s, batch.tokens, batch.seq)
        parts[f"{name}_head"] = head_saved_bytes(shape, batch.targets, loss)
    parts["peak_transient"] = peak_transient(shape, s, train, kl, parts.get("kl_head", parts["ce_head"]))
    # AdamW's step comes after the activations are freed: gradients, both moments and about one
    # temporary per parameter (fp32). It sets the peak only for large adapters on tiny models.
    parts["optimizer_step"] = adapter_state_bytes(shape, kind)
    parts["total"] = max(sum(v for k, v in parts.items() if k != "optimizer_step"), parts["optimizer_step"])
    return parts


def peak_transient(shape: Shape, s: int, train: Batch, kl: Batch | None, last_head: float) -> float:
    """What is live at the step's peak beyond every saved tensor, at the largest of three moments.

    Weight copies are made for one matmul and freed, so the peak comes where a large copy meets
    large activations: the last forward's unembedding (a W_U copy, the logits, the last block's
    output, the final norm's fp32 temporaries; the tail has not saved its own tensors yet), or
    its last block's MLP (a W_out copy and the unsaved products), or a tail's backward (the
    log-probs' gradient and the zeros it is scattered into, fp32).
    """
    d, v, last = shape.d_model, shape.d_vocab, kl if kl is not None else train
    tail_forward = s * d * v + s * last.targets * v + s * last.tokens * d + 8 * last.targets * d
    block_forward = s * d * shape.d_mlp + last.tokens * (s * shape.d_mlp + s * d + 8 * d)
    tail_backward = 8 * max(train.targets, last.targets) * v
    return max(tail_forward - last_head, block_forward - last_head, tail_backward)


@dataclass(frozen=True)
class Workload:
    """The data a run caches on the device: conversations of `tokens` tokens, `assistant` predicted."""

    train_conversations: int = 6000
    kl_conversations: int = 6000
    tokens: int = 200
    assistant: int = 100


def weight_copies_avoided(shape: Shape, kind: str, s: int) -> int:
    """What the step's two forwards would keep in weight copies without `copy_free_weights`: a copy
    of every block's matrices above the adapter (its own from where grad enters) and of W_U."""
    matrices, _ = adapter_matrices(kind)
    entry = min((_ENTRY_RANK[name] for name in matrices), default=0)
    n_blocks = shape.n_layers - shape.layer
    per_forward = (n_blocks - 1) * weight_copy_bytes(shape, s) + weight_copy_bytes(shape, s, entry)
    return 2 * (per_forward + s * shape.d_model * shape.d_vocab)


def extrapolate(
    shape: Shape, batch: Batch, kind: str, workload: Workload, *, traced: float | None,
    cache_device: str = "device", kl: bool = True,
) -> dict:  # fmt: skip
    """One table row in bytes: bf16 weights, adapter state, caches and one CE + top-k KL step
    (CE only without `kl`; give the workload no KL conversations then).

    `cache_device="cpu"` keeps the cached residuals and reference in host memory (the engine's
    `FinetuneConfig.cache_device`): only one batch of each is on the GPU during a step.
    """
    s = 2
    cache_tokens = (workload.train_conversations + workload.kl_conversations) * workload.tokens
    kl_targets = workload.kl_conversations * workload.assistant
    step = estimate_step(shape, kind, s, batch, batch if kl else None)
    n_blocks = shape.n_layers - shape.layer
    row = {
        "model": shape.name, "layer": shape.layer, "blocks_with_grad": n_blocks, "batch": batch.label(),
        "assistant_per_conversation": batch.assistant, "adapter": kind, "cache_device": cache_device,
        "weights": shape.params() * s, "adapter_state": adapter_state_bytes(shape, kind),
        "residual_cache": cache_tokens * shape.d_model * s,
        "residual_cache_kl": workload.kl_conversations * workload.tokens * shape.d_model * s,
        "reference_topk": kl_targets * reference_bytes_per_token(shape, "topk"),
        "reference_exact": kl_targets * reference_bytes_per_token(shape, "exact"),
        "step_estimate": step["total"], "step_traced": traced, "step_parts": step,
        "weight_copies_avoided": weight_copies_avoided(shape, kind, s),
        "blocks_below_adapter": shape.layer * shape.block_params() * s + shape.d_vocab * shape.d_model * s,
    }  # fmt: skip
    # On the GPU during a step with host caches: one batch's residuals and its reference rows.
    in_flight = (1 + kl) * batch.tokens * shape.d_model * s + kl * batch.targets * reference_bytes_per_token(
        shape, "topk"
    )
    row["caches_in_flight"] = in_flight
    row["caches_on_device"] = (
        row["residual_cache"] + row["reference_topk"] if cache_device == "device" else in_flight
    )
    step_bytes = traced if traced is not None else step["total"]
    row["total_topk"] = row["weights"] + row["adapter_state"] + row["caches_on_device"] + step_bytes
    return row
