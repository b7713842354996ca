"""Memory of one `mech.finetune` step: measured on small models, traced and extrapolated to Qwen2.5.

Three kinds of numbers, never mixed up in the output:

- **measured** (eager, CPU): the shipped toy organism (fp32) and a random-weight Qwen2 with
  Qwen2.5-14B's per-layer shapes but 3 layers and a 16384-token vocabulary (bf16). Components are
  counted with `torch.autograd.graph.saved_tensors_hooks` (unique storages, parameters and the
  cached input excluded) and a step's peak with a dispatch-level allocation tracker (bytes of the
  tensors PyTorch creates, as `torch.cuda.max_memory_allocated` would count them; no allocator
  rounding, CUDA context or cuBLAS workspace);
- **traced** (meta device): the same step replayed on `device="meta"` tensors at the real sizes
  (48/64/80 layers, full vocabulary): every allocation PyTorch would make, with no data and no GPU;
- **extrapolated**: `estimate_step`, a formula with per-token and per-block terms, checked against
  both of the above.

No GPU was used: nothing here is a GPU measurement.

    .venv/bin/python -m benchmarks.memory [--out runs/bench/memory.json] [--markdown FILE]

Prints the measured numbers and the tables; writes everything as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformer_lens import HookedTransformer
from transformers import Qwen2Config

from mech._quiet import hooked_transformer
from mech.adapters import Adapter, SteeringVector
from mech.chat import ChatBatch
from mech.finetune import CachedChatSet, FinetuneConfig, KLSchedule, _step
from mech.hf_convert import config_from_local
from mech.lora import MATRICES, LoraAdapter, Matrix
from mech.metrics import kl_from_logprobs, topk_kl
from mech.model import load_model

GIB = 2**30
TOPK = 256
KINDS = ("steering", "lora_r1", "lora_r32")
H100_GIB, H200_GIB = 78.0, 139.0
"""About what PyTorch can allocate on an 80 GB H100 and a 141 GB H200."""


# -- shapes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """The dimensions that set a Qwen2-style model's memory (TransformerLens names)."""

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int

    @property
    def layer(self) -> int:
        """The adapter's block: the middle one, as `mech.hooks.default_layer` (24 of 48)."""
        return self.n_layers // 2

    def matrix_shapes(self) -> dict[Matrix, tuple[int, int]]:
        """(in, out) of each block matrix, as `mech.lora.matrix_shape`."""
        q, kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        return {
            "W_Q": (self.d_model, q), "W_K": (self.d_model, kv), "W_V": (self.d_model, kv),
            "W_O": (q, self.d_model), "W_gate": (self.d_model, self.d_mlp),
            "W_in": (self.d_model, self.d_mlp), "W_out": (self.d_mlp, self.d_model),
        }  # fmt: skip

    def block_params(self) -> int:
        """Parameters of one block as TransformerLens stores them (matrices, biases, norms)."""
        matrices = sum(i * o for i, o in self.matrix_shapes().values())
        biases = (
            self.n_heads * self.d_head + 2 * self.n_kv_heads * self.d_head + 2 * self.d_model + self.d_mlp
        )
        return matrices + biases + 2 * self.d_model

    def params(self) -> int:
        return (
            self.n_layers * self.block_params()
            + 2 * self.d_vocab * self.d_model
            + self.d_model
            + self.d_vocab
        )


QWEN25_14B = Shape("Qwen2.5-14B-Instruct", 48, 5120, 13824, 40, 8, 128, 152064)
QWEN25_32B = Shape("Qwen2.5-32B-Instruct", 64, 5120, 27648, 40, 8, 128, 152064)
QWEN25_72B = Shape("Qwen2.5-72B-Instruct", 80, 8192, 29568, 64, 8, 128, 152064)
REAL_SHAPE = Shape("Qwen2.5-14B block shapes, 3 layers, vocab 16384", 3, 5120, 13824, 40, 8, 128, 16384)
"""What fits this benchmark's CPU budget: real per-layer shapes; 48 -> 3 layers, 152064 -> 16384 tokens."""


def shape_of(model: HookedTransformer) -> Shape:
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    return Shape(
        cfg.model_name, cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads, n_kv, cfg.d_head, cfg.d_vocab
    )


def qwen2_model(shape: Shape, *, dtype: torch.dtype, device: str, seed: int = 0) -> HookedTransformer:
    """A random-weight HookedTransformer of `shape` with the config `load_model` builds for a Qwen2
    checkpoint (`mech.hf_convert`), without writing one. On "meta" nothing is allocated."""
    hf = Qwen2Config(
        vocab_size=shape.d_vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads, max_position_embeddings=32768, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"],
    )  # fmt: skip
    cfg = config_from_local(Path(shape.name), hf, fold_ln=False, dtype=dtype, device=device, n_ctx=None)
    with torch.device(device):
        model = hooked_transformer(cfg, move_to_device=False)
    if device != "meta":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".w"):  # RMSNorm gains
                    p.fill_(1.0)
                else:
                    p.uniform_(-0.03, 0.03, generator=generator)
    model.requires_grad_(False)
    return model


def make_adapter(kind: str, model: HookedTransformer, layer: int) -> Adapter:
    """As `experiments.common.make_adapter` (which the library may not import)."""
    if kind == "steering":
        return SteeringVector(model.cfg.d_model, layer=layer, point="pre", init_std=0.01)
    matrices: list[Matrix] = ["W_out"] if kind == "lora_r1" else list(MATRICES)
    return LoraAdapter(model, layers=[layer], matrices=matrices, rank=1 if kind == "lora_r1" else 32)


def adapter_matrices(kind: str) -> tuple[tuple[Matrix, ...], int]:
    if kind == "steering":
        return (), 0
    return (("W_out",), 1) if kind == "lora_r1" else (MATRICES, 32)


# -- counting -------------------------------------------------------------------------------------
def _key(t: Tensor) -> int:
    # The StorageImpl's address: views share it, and it is unique on "meta" too (data_ptr() is 0 there).
    return t.untyped_storage()._cdata


def saved_bytes(fn: Callable[[], Any], exclude: Sequence[Tensor] = ()) -> tuple[Any, int]:
    """`fn()` and the bytes autograd saved for backward while it ran: unique storages, not `exclude`."""
    skip = {_key(t) for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _key(t)
        if key not in skip:
            storages[key] = t.untyped_storage().nbytes()
        # Not `t` itself: a saved output would then hold its own grad_fn, a cycle never freed.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


class AllocationTracker(TorchDispatchMode):
    """Live bytes of the tensor storages created inside it, and their peak.

    Every op's outputs are seen at the dispatcher (forward, backward and optimizer alike); a
    storage counts until its last reference dies. Tensors that existed before are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def _add(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._alive:
            return
        nbytes = storage.nbytes()

        def freed(_: object, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._alive.pop(key, None)

        self._alive[key] = weakref.ref(storage, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ARG002
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Views and in-place results share an input's storage: no new memory (and the input may
        # predate the tracker, like a weight seen through `W.T`).
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and _key(t) not in inputs:
                self._add(t)
        return out


def tensor_bytes(tensors: Any) -> int:
    return sum(t.untyped_storage().nbytes() for t in tree_flatten(tensors)[0] if isinstance(t, Tensor))


def dtype_bytes(model: HookedTransformer) -> int:
    return torch.empty((), dtype=model.cfg.dtype).element_size()


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


# -- measurements on real tensors -----------------------------------------------------------------
def _residual(model: HookedTransformer, batch: int, seq: int, seed: int) -> Tensor:
    """A stand-in for a cached residual: what is saved depends on shapes, not values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, model.cfg.d_model, generator=g).to(model.cfg.device, model.cfg.dtype)


def fit_block_costs(model: HookedTransformer, kind: str, seq: int) -> dict[str, float]:
    """Saved bytes of the blocks above the adapter at (batch, seq) = (1, P), (2, P), (1, 2P), solved
    for S = C + T * per_token + T * P * per_token_per_key (T = batch * P tokens), per block run."""
    adapter = make_adapter(kind, model, model.cfg.n_layers // 2).to(model.cfg.device)
    start = adapter.entry(model).start_at_layer
    n_blocks = model.cfg.n_layers - start
    saved = {}
    for b, p in ((1, seq), (2, seq), (1, 2 * seq)):
        resid = _residual(model, b, p, seed=b * 1000 + p)
        exclude = [*model.parameters(), *model.buffers(), *adapter.parameters(), resid]
        with adapter.applied(model, start_at_layer=start):
            _, saved[b, p] = saved_bytes(
                lambda r=resid: model(r, start_at_layer=start, stop_at_layer=model.cfg.n_layers), exclude
            )
    s1, s2, s3 = saved[1, seq], saved[2, seq], saved[1, 2 * seq]
    per_key = (s3 - s2) / (2 * seq * seq)
    per_token = (s2 - s1) / seq - seq * per_key
    constant = s1 - seq * per_token - seq * seq * per_key
    return {
        "blocks": n_blocks, "constant_per_block": constant / n_blocks,
        "per_token_per_block": per_token / n_blocks, "per_token_per_key_per_block": per_key / n_blocks,
        "saved": {f"{b}x{p}": v for (b, p), v in saved.items()},
    }  # fmt: skip


def measure_head(model: HookedTransformer, n: int = 64) -> dict[str, float]:
    """Saved bytes of the tail (final norm, unembedding, loss) per assistant row and per call, for
    CE, exact KL and top-k KL, and the cached reference per row; fitted from n and 2n rows."""
    end, s = model.cfg.n_layers, dtype_bytes(model)
    out: dict[str, float] = {}
    for loss in ("ce", "exact", "topk"):
        saved = {}
        for rows in (n, 2 * n):
            g = torch.Generator().manual_seed(rows)
            final = torch.randn(rows, model.cfg.d_model, generator=g).to(model.cfg.device, model.cfg.dtype)
            final.requires_grad_(True)
            with torch.no_grad():
                ref = model(final[None], start_at_layer=end)[0].float().log_softmax(-1)
            top = torch.topk(ref, min(TOPK, ref.shape[-1]))
            targets = torch.randint(model.cfg.d_vocab, (rows,), generator=g).to(model.cfg.device)

            def run(final=final, ref=ref, top=top, targets=targets, loss=loss) -> Tensor:
                logits = model(final[None], start_at_layer=end)[0]
                if loss == "ce":
                    return torch.nn.functional.cross_entropy(logits.float(), targets)
                if loss == "exact":
                    return kl_from_logprobs(ref, logits).mean()
                return topk_kl(top.values, top.indices, logits).mean()

            exclude = [*model.parameters(), *model.buffers(), final, ref, *top]
            _, saved[rows] = saved_bytes(run, exclude)
            if loss == "exact":
                out["reference_exact_per_token"] = tensor_bytes(ref) / rows
            elif loss == "topk":
                out["reference_topk_per_token"] = tensor_bytes(list(top)) / rows
        per_row = (saved[2 * n] - saved[n]) / n
        out[f"{loss}_per_token"] = per_row
        out[f"{loss}_constant"] = saved[n] - n * per_row
    out["w_u_copy_formula"] = s * model.cfg.d_model * model.cfg.d_vocab
    return out


def _chat_batch(batch: Batch, d_vocab: int, device: str, seed: int) -> ChatBatch:
    tokens = torch.randint(d_vocab, (batch.batch, batch.seq), generator=torch.Generator().manual_seed(seed))
    response = torch.zeros(batch.batch, batch.seq, dtype=torch.bool)
    response[:, batch.seq - batch.assistant :] = True
    attention = torch.ones(batch.batch, batch.seq, dtype=torch.long)
    return ChatBatch(tokens, attention, response, "right").to(device)


def chat_sets(model: HookedTransformer, train: Batch, kl: Batch) -> tuple[list[ChatBatch], list[Tensor]]:
    """Two synthetic chat batches and the residuals the engine caches for them (at the middle block)."""
    start = model.cfg.n_layers // 2
    batches = [
        _chat_batch(b, model.cfg.d_vocab, model.cfg.device, seed) for seed, b in enumerate((train, kl))
    ]
    with torch.no_grad():
        return batches, [model(b.tokens, stop_at_layer=start) for b in batches]


def engine_step_peak(
    model: HookedTransformer, kind: str, batches: list[ChatBatch], residuals: list[Tensor]
) -> dict[str, float]:
    """Peak bytes allocated during one `mech.finetune._step` (CE + top-k KL, backward, AdamW):
    the engine's own code, eager. The peak comes in backward, before AdamW creates its state."""
    adapter = make_adapter(kind, model, model.cfg.n_layers // 2).to(model.cfg.device)
    site = adapter.entry(model)
    assert site.start_at_layer == model.cfg.n_layers // 2, site
    train_set, kl_set = (
        CachedChatSet([b], [r], site, name, name) for b, r, name in zip(batches, residuals, ("train", "kl"))
    )
    # The chat model's top-k log-probs, as `cache_reference` keeps them (their values do not matter here).
    n_targets = kl_set.n_targets()
    logprobs = torch.randn(n_targets, model.cfg.d_vocab, device=model.cfg.device).log_softmax(-1)
    kl_set.references, kl_set.reference_mode = (
        [torch.topk(logprobs, min(TOPK, model.cfg.d_vocab))],
        ("topk", TOPK),
    )
    cfg = FinetuneConfig(lr=1e-3, kl=KLSchedule(1.0), reference="topk")
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
    tracker = AllocationTracker()
    with tracker:
        _step(model, adapter, optimizer, train_set, kl_set, cfg, 0)
    return {
        "peak": tracker.peak,
        "adapter_state": tensor_bytes([*adapter.parameters(), *optimizer.state.values()])
        + tensor_bytes([p.grad for p in adapter.parameters() if p.grad is not None]),
        "reference_topk_per_token": tensor_bytes(list(kl_set.references[0])) / n_targets,
    }


# -- the step replayed without data (meta) --------------------------------------------------------
def replay_step(model: HookedTransformer, kind: str, train: Batch, kl: Batch | None) -> float:
    """Peak bytes allocated during one step that mirrors `mech.finetune._step` (CE, top-k KL,
    backward, AdamW) but selects assistant rows by index instead of boolean mask, so that it runs
    on "meta" tensors: the real-size step, traced without memory or a GPU."""
    device = model.cfg.device
    with torch.device(device):
        adapter = make_adapter(kind, model, model.cfg.n_layers // 2)
    start, end = adapter.entry(model).start_at_layer, model.cfg.n_layers
    d = model.cfg.d_model

    def inputs(batch: Batch) -> tuple[Tensor, Tensor]:
        resid = torch.zeros(batch.batch, batch.seq, d, dtype=model.cfg.dtype, device=device)
        cols = torch.arange(batch.seq - batch.assistant - 1, batch.seq - 1)
        rows = (torch.arange(batch.batch)[:, None] * batch.seq + cols).flatten().to(device)
        return resid, rows

    def target_logits(resid: Tensor, rows: Tensor) -> Tensor:
        with adapter.applied(model, start_at_layer=start):
            final = model(resid, start_at_layer=start, stop_at_layer=end)
        return model(final.flatten(0, 1)[rows][None], start_at_layer=end)[0]

    train_in = inputs(train)
    kl_in = inputs(kl) if kl is not None else None
    targets = torch.zeros(train.targets, dtype=torch.long, device=device)
    if kl is not None:
        k = min(TOPK, model.cfg.d_vocab)
        ref_values = torch.zeros(kl.targets, k, device=device)
        ref_indices = torch.zeros(kl.targets, k, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(target_logits(*train_in).float(), targets)
        if kl_in is not None:
            loss = loss + topk_kl(ref_values, ref_indices, target_logits(*kl_in)).mean()
        norm_sq = adapter.update_norm_sq()  # as the engine: computed, not in the loss (l2_weight 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        del norm_sq

    tracker = AllocationTracker()
    with tracker:
        step()
    return tracker.peak


# -- the cases ------------------------------------------------------------------------------------
def measure_model(
    model: HookedTransformer, label: str, *, seq: int, step_train: Batch, step_kl: Batch
) -> dict:
    """Everything measured (eager) on one model, with the formula's values beside it."""
    shape, s = shape_of(model), dtype_bytes(model)
    began = time.perf_counter()
    out: dict[str, Any] = {
        "model": label, "dtype": str(model.cfg.dtype).removeprefix("torch."), "shape": asdict(shape),
        "layer": shape.layer, "weights_bytes": tensor_bytes(list(model.parameters())),
        "weights_formula_bytes": shape.params() * s,
    }  # fmt: skip
    out["head"] = measure_head(model)
    batches, residuals = chat_sets(model, step_train, step_kl)
    out["residual_per_token"] = tensor_bytes(residuals[0]) / step_train.tokens
    out["kinds"] = {}
    for kind in KINDS:
        fit = fit_block_costs(model, kind, seq)
        if kind == "steering":
            formula = {
                "constant_per_block": block_bytes(shape, s, 0, seq),
                "per_token_per_block": block_bytes(shape, s, 1, 0) - block_bytes(shape, s, 0, 0),
                "per_token_per_key_per_block": (block_bytes(shape, s, 1, 1) - block_bytes(shape, s, 1, 0)),
            }
            fit["formula"] = formula
            fit["ratio"] = {k: fit[k] / v for k, v in formula.items()}
        fit["saved_formula"] = {
            f"{b}x{p}": fit["blocks"] * block_bytes(shape, s, b * p, p)
            + adapter_saved_bytes(shape, kind, s, b * p, p)
            for b, p in ((1, seq), (2, seq), (1, 2 * seq))
        }
        fit["saved_ratio_to_formula"] = {k: fit["saved"][k] / v for k, v in fit["saved_formula"].items()}
        step = engine_step_peak(model, kind, batches, residuals)
        estimate = estimate_step(shape, kind, s, step_train, step_kl)
        step["estimate"] = estimate["total"]
        step["ratio_to_estimate"] = step["peak"] / estimate["total"]
        step["adapter_state_formula"] = adapter_state_bytes(shape, kind)
        fit["step"] = step
        out["kinds"][kind] = fit
    out["seconds"] = time.perf_counter() - began
    return out


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


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.1f}"


def fits(total: float) -> str:
    """The smallest device that holds `total` bytes (allocator slack and the CUDA context not included)."""
    if total <= H100_GIB * GIB:
        return "1 H100"
    if total <= H200_GIB * GIB:
        return "1 H200"
    return f">= {math.ceil(total / (H100_GIB * GIB))} H100 split"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model (adapter block) | batch | adapter | weights | adapter + AdamW | cached residuals "
        "| reference: top-k (exact) | step, traced | step, formula | of which weight copies | total | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['layer']}) | {r['batch']} | {r['adapter']} | {_gib(r['weights'])} "
            f"| {r['adapter_state'] / 2**20:.2f} MiB | {_gib(r['residual_cache'])} "
            f"| {_gib(r['reference_topk'])} ({_gib(r['reference_exact'])}) | {_gib(r['step_traced'])} "
            f"| {_gib(r['step_estimate'])} | {_gib(r['weight_copies_in_step'])} | **{_gib(r['total_topk'])}** "
            f"| {fits(r['total_topk'])} |"
        )
    return "\n".join(lines) + "\n"


def mitigation_table(rows: list[dict]) -> str:
    """Totals (GiB) without the KL term (alone), then with three changes in turn (cumulative)."""
    lines = [
        "| model, batch, adapter | today | no KL term (`kl_data=None`) | without TransformerLens's weight copies "
        "| + residual cache in host memory | + blocks below the adapter in host memory |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = r["step_parts"]
        today = r["total_topk"]
        kl = (
            sum(v for k, v in parts.items() if k.startswith("kl_"))
            + r["reference_topk"]
            + r["residual_cache_kl"]
        )
        no_kl = today - kl
        no_copies = today - r["weight_copies_in_step"]
        host_cache = no_copies - r["residual_cache"]
        host_lower = host_cache - r["blocks_below_adapter"]
        cells = " | ".join(
            f"{_gib(x)} ({fits(x)})" for x in (today, no_kl, no_copies, host_cache, host_lower)
        )
        lines.append(f"| {r['model']}, {r['batch']}, {r['adapter']} | {cells} |")
    return "\n".join(lines) + "\n"


def components_table(cases: list[dict]) -> str:
    """The measured per-item costs, beside the formula's."""
    lines = [
        "| model | weights (formula) | cached residual / token | reference / assistant token: exact, top-256 "
        "| saved by the tail / assistant token: CE, exact KL, top-k KL | tail constant (a W_U copy) "
        "| adapter + grad + AdamW: steering, r1, r32 (formula) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        h = c["head"]
        state = [c["kinds"][k]["step"]["adapter_state"] for k in KINDS]
        formula = [c["kinds"][k]["step"]["adapter_state_formula"] for k in KINDS]
        lines.append(
            f"| {c['model']} | {c['weights_bytes'] / 2**20:.1f} MiB ({c['weights_formula_bytes'] / 2**20:.1f}) "
            f"| {c['residual_per_token']:.0f} B | {h['reference_exact_per_token']:.0f} B, {h['reference_topk_per_token']:.0f} B "
            f"| {h['ce_per_token']:.0f}, {h['exact_per_token']:.0f}, {h['topk_per_token']:.0f} B "
            f"| {h['ce_constant'] / 2**20:.2f} MiB ({h['w_u_copy_formula'] / 2**20:.2f}) "
            f"| {', '.join(f'{b / 1024:.0f}' for b in state)} KiB ({', '.join(f'{b / 1024:.0f}' for b in formula)}) |"
        )
    return "\n".join(lines) + "\n"


def measured_table(cases: list[dict]) -> str:
    lines = [
        "| model | adapter | per block: constant | per token | per token per key position "
        "| measured / formula (const, token, key) | saved, 3 sizes: measured / formula | step peak, engine | formula | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for kind, fit in case["kinds"].items():
            ratio = fit.get("ratio")
            ratios = "-" if ratio is None else ", ".join(f"{ratio[k]:.3f}" for k in ratio)
            saved = ", ".join(f"{v:.4f}" for v in fit["saved_ratio_to_formula"].values())
            step = fit["step"]
            lines.append(
                f"| {case['model']} | {kind} | {fit['constant_per_block'] / 2**20:.1f} MiB "
                f"| {fit['per_token_per_block'] / 1024:.1f} KiB | {fit['per_token_per_key_per_block']:.1f} B "
                f"| {ratios} | {saved} | {step['peak'] / 2**20:.1f} MiB | {step['estimate'] / 2**20:.1f} MiB "
                f"| {step['ratio_to_estimate']:.4f} |"
            )
    return "\n".join(lines) + "\n"


EXTRAPOLATED = (
    (QWEN25_14B, (Batch(2, 256, 100), Batch(8, 256, 100), Batch(32, 512, 256)), KINDS),
    (QWEN25_32B, (Batch(2, 256, 100), Batch(8, 256, 100)), ("lora_r1",)),
    (QWEN25_72B, (Batch(2, 256, 100), Batch(8, 256, 100)), ("lora_r1",)),
)
"""(model, step shapes, adapters) of the extrapolated table; KL batches have the training batch's shape."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    # Measured, eager: CE batch and KL batch of 2 conversations x 32 tokens, 16 of them predicted.
    small = Batch(2, 32, 16)
    toy = load_model("toy")
    toy.requires_grad_(False)
    cases = [measure_model(toy, "toy organism (fp32)", seq=32, step_train=small, step_kl=small)]
    del toy
    real = qwen2_model(REAL_SHAPE, dtype=torch.bfloat16, device="cpu")
    cases.append(measure_model(real, REAL_SHAPE.name + " (bf16)", seq=32, step_train=small, step_kl=small))
    del real

    # Traced: the replayed step on "meta" against the engine's eager peak at the same size, ...
    meta_small = qwen2_model(REAL_SHAPE, dtype=torch.bfloat16, device="meta")
    replay_check = {}
    for kind in KINDS:
        meta_peak, eager_peak = (
            replay_step(meta_small, kind, small, small),
            cases[1]["kinds"][kind]["step"]["peak"],
        )
        replay_check[kind] = {
            "meta_replay_peak": meta_peak,
            "engine_eager_peak": eager_peak,
            "ratio": meta_peak / eager_peak,
        }

    # ... then at the real sizes, beside the formula.
    workload = Workload()
    rows = []
    for shape, batches, kinds in EXTRAPOLATED:
        meta = qwen2_model(shape, dtype=torch.bfloat16, device="meta")
        if sum(p.numel() for p in meta.parameters()) != shape.params():
            raise AssertionError(f"{shape.name}: the parameter formula does not match the model")
        for batch in batches:
            for kind in kinds:
                rows.append(
                    extrapolate(shape, batch, kind, workload, traced=replay_step(meta, kind, batch, batch))
                )
        del meta

    seconds = time.perf_counter() - began
    tables = (
        "Measured, eager on CPU: saved tensors per block run with grad, and one step's peak\n\n"
        + measured_table(cases)
        + "\nMeasured, eager on CPU: the other components\n\n"
        + components_table(cases)
        + "\nExtrapolated to bf16 (GiB; top-k reference; step traced on the meta device, and by the formula)\n\n"
        + markdown_table(rows)
        + "\nWhat would fit (GiB, formula): without the KL term alone; then three changes, cumulative\n\n"
        + mitigation_table([r for r in rows if r["adapter"] == "lora_r1"])
    )
    print(tables)
    for kind, check in replay_check.items():
        print(f"meta replay / engine step peak at the measured size, {kind}: {check['ratio']:.4f}")
    print(f"{seconds:.0f} s on {args.threads} thread(s)")
    result = {
        "note": "measured: eager on CPU; traced: meta device, no data; nothing was measured on a GPU",
        "measured": cases, "meta_replay_check": replay_check, "extrapolated": rows,
        "workload": asdict(workload), "seconds": seconds, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(tables)


if __name__ == "__main__":
    main()
