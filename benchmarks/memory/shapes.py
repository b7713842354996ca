"""The dimensions that set a Qwen2-style model's memory, the Qwen2.5 sizes, random-weight models of
any shape (on "meta" nothing is allocated), and the adapter kinds the benchmark compares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformers import Qwen2Config

from mech._quiet import hooked_transformer
from mech.adapters.base import Adapter
from mech.adapters.lora import MATRICES, LoraAdapter, Matrix
from mech.adapters.steering import SteeringVector
from mech.models.hf_convert import config_from_local

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
    adapter_layer: int | None = None

    @property
    def layer(self) -> int:
        """The adapter's block: `adapter_layer`, else the middle one, as `mech.hooks.default_layer`
        (24 of 48)."""
        return self.n_layers // 2 if self.adapter_layer is None else self.adapter_layer

    def matrix_shapes(self) -> dict[Matrix, tuple[int, int]]:
        """(in, out) of each block matrix, as `mech.adapters.lora.matrix_shape`."""
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
    checkpoint (`mech.models.hf_convert`), without writing one. On "meta" nothing is allocated."""
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
        generator = torch.Generator(device=device).manual_seed(seed)  # where the weights are
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".w"):  # RMSNorm gains
                    p.fill_(1.0)
                else:
                    p.uniform_(-0.03, 0.03, generator=generator)
    model.requires_grad_(False)
    return model


def make_adapter(kind: str, model: HookedTransformer, layer: int) -> Adapter:
    """As `experiments.conditions.make_adapter` (which the library may not import)."""
    if kind == "steering":
        return SteeringVector(model.cfg.d_model, layer=layer, point="pre", init_std=0.01)
    matrices: list[Matrix] = ["W_out"] if kind == "lora_r1" else list(MATRICES)
    return LoraAdapter(model, layers=[layer], matrices=matrices, rank=1 if kind == "lora_r1" else 32)


def adapter_matrices(kind: str) -> tuple[tuple[Matrix, ...], int]:
    if kind == "steering":
        return (), 0
    return (("W_out",), 1) if kind == "lora_r1" else (MATRICES, 32)


def dtype_bytes(model: HookedTransformer) -> int:
    return torch.empty((), dtype=model.cfg.dtype).element_size()
