"""LoRA as hooks: `W x + scale * B A x` on chosen matrices of chosen blocks, with the model's
weights untouched.

Each adapted matrix reads its input where the model computes it and adds `scale * (x A^T) B^T`
to that matrix's output, before anything the architecture applies next (rotary, Gemma-2's
post-norms, the activation function):

| matrix (PEFT name)   | input read at                       | update added to            |
|----------------------|-------------------------------------|----------------------------|
| W_Q/W_K/W_V (q/k/v)  | the attention module's inputs       | `attn.hook_q/k/v`          |
| W_O (o_proj)         | `attn.hook_z`, heads flattened       | the attention module output |
| W_gate (gate_proj)   | the MLP module's input              | `mlp.hook_pre`             |
| W_in (up_proj)       | the MLP module's input              | `mlp.hook_pre_linear` (gated) or `mlp.hook_pre` |
| W_out (down_proj)    | `mlp.hook_post`                     | the MLP module output      |

A is [rank, in], B is [out, rank] in PEFT's orientation (`Delta W = scale * B @ A` acts as
`x @ Delta W^T`), initialised as PEFT does (A Kaiming-uniform, B zero), so training starts at the
unadapted model. `scale` is alpha / sqrt(rank) with rsLoRA (the paper's rank-32 adapters) or
alpha / rank without. Noise unit for `perturbed`: each A and each B separately (the authors'
protocol; Delta W' is then neither norm-preserving nor orthogonal to Delta W).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mech.adapters.base import Adapter, AdapterSite
from mech.adapters.noise import orthogonal_noise
from mech.hooks import check_layer, resid_hook_name
from mech.io.atomic import write_json
from mech.models.placement import block_device

Matrix = Literal["W_Q", "W_K", "W_V", "W_O", "W_gate", "W_in", "W_out"]
MATRICES: tuple[Matrix, ...] = ("W_Q", "W_K", "W_V", "W_O", "W_gate", "W_in", "W_out")
PEFT_NAMES: dict[str, Matrix] = {
    "q_proj": "W_Q", "k_proj": "W_K", "v_proj": "W_V", "o_proj": "W_O",
    "gate_proj": "W_gate", "up_proj": "W_in", "down_proj": "W_out",
}  # fmt: skip
_PEFT_PARENT = {"W_Q": "self_attn", "W_K": "self_attn", "W_V": "self_attn", "W_O": "self_attn"}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def matrix_shape(model: HookedTransformer, matrix: Matrix) -> tuple[int, int]:
    """(in_features, out_features) of a block matrix, as PEFT sees its nn.Linear."""
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    if matrix in ("W_K", "W_V") and cfg.n_key_value_heads and cfg.ungroup_grouped_query_attention:
        raise ValueError(
            "LoRA on W_K/W_V needs grouped K/V heads; load without ungroup_grouped_query_attention"
        )
    if matrix == "W_gate" and not cfg.gated_mlp:
        raise ValueError(f"model {cfg.model_name!r} has no gated MLP, so no W_gate")
    shapes = {
        "W_Q": (cfg.d_model, cfg.n_heads * cfg.d_head),
        "W_K": (cfg.d_model, n_kv * cfg.d_head),
        "W_V": (cfg.d_model, n_kv * cfg.d_head),
        "W_O": (cfg.n_heads * cfg.d_head, cfg.d_model),
        "W_gate": (cfg.d_model, cfg.d_mlp),
        "W_in": (cfg.d_model, cfg.d_mlp),
        "W_out": (cfg.d_mlp, cfg.d_model),
    }
    if matrix not in shapes:
        raise ValueError(f"unknown matrix {matrix!r}; expected one of {MATRICES}")
    return shapes[matrix]


def _key(layer: int, matrix: str) -> str:
    return f"{layer}_{matrix}"  # nn.ParameterDict keys cannot contain dots


class LoraAdapter(Adapter):
    """Rank-`rank` LoRA on `matrices` of each block in `layers` (or on explicit `sites`)."""

    kind = "lora"

    def __init__(
        self,
        model: HookedTransformer,
        *,
        layers: Sequence[int] = (),
        matrices: Sequence[Matrix] = ("W_out",),
        sites: Sequence[tuple[int, Matrix]] | None = None,
        rank: int = 1,
        alpha: float | None = None,
        rslora: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if sites is None:
            if not layers:
                raise ValueError("give the layers to adapt (or explicit sites)")
            sites = [(layer, m) for layer in layers for m in matrices]
        # Negative layers count from the end; stored normalised so hook names and keys are real.
        n = model.cfg.n_layers
        self.sites: list[tuple[int, Matrix]] = [(check_layer(model, layer) % n, m) for layer, m in sites]
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites must be non-empty and distinct, got {self.sites}")
        self.rank, self.rslora = rank, rslora
        self.alpha = float(alpha) if alpha is not None else (math.sqrt(rank) if rslora else float(rank))
        self.scale = self.alpha / (math.sqrt(rank) if rslora else rank)
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        generator = torch.Generator().manual_seed(seed)
        for layer, matrix in self.sites:
            check_layer(model, layer)
            d_in, d_out = matrix_shape(model, matrix)
            # PEFT's default: kaiming_uniform_(a=sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0.
            bound = 1.0 / math.sqrt(d_in)
            a = (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound
            self.A[_key(layer, matrix)] = nn.Parameter(a)
            self.B[_key(layer, matrix)] = nn.Parameter(torch.zeros(d_out, rank))

    def place(self, model: HookedTransformer) -> LoraAdapter:
        """Each site's A and B on the device of its block (as `Module.to`, new parameters where
        they move: place before making the optimizer)."""
        for layer, matrix in self.sites:
            device, key = block_device(model, layer), _key(layer, matrix)
            for factors in (self.A, self.B):
                if factors[key].device != device:
                    factors[key] = nn.Parameter(factors[key].detach().to(device), factors[key].requires_grad)
        return self

    # -- the update -------------------------------------------------------------------------
    def delta(self, layer: int, matrix: Matrix, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        a, b = self.A[_key(layer, matrix)], self.B[_key(layer, matrix)]
        # A no-op unless the adapter was left on another device than its block (see `place`).
        a, b = a.to(x.device), b.to(x.device)
        return (self.scale * ((x.to(a.dtype) @ a.T) @ b.T)).to(x.dtype)

    def delta_weights(self) -> dict[tuple[int, Matrix], Float[Tensor, "d_out d_in"]]:
        """Delta W = scale * B @ A per site, in PEFT's [out, in] orientation."""
        return {
            (layer, m): self.scale * self.B[_key(layer, m)] @ self.A[_key(layer, m)]
            for layer, m in self.sites
        }

    def update_norm_sq(self) -> Float[Tensor, ""]:
        # ||B A||_F^2 = trace((B^T B)(A A^T)): rank x rank products, never the d_out x d_in matrix.
        terms = [
            torch.trace((b.T @ b) @ (a @ a.T))
            for a, b in ((self.A[_key(*s)], self.B[_key(*s)]) for s in self.sites)
        ]
        return self.scale**2 * torch.stack(terms).sum()

    def update_inner(self, other: Adapter) -> Float[Tensor, ""]:
        if not isinstance(other, LoraAdapter) or other.sites != self.sites:
            raise ValueError(f"cannot compare LoRA on {self.sites} with {other.spec()}")
        terms = []
        for site in self.sites:
            a1, b1 = self.A[_key(*site)], self.B[_key(*site)]
            a2, b2 = other.A[_key(*site)], other.B[_key(*site)]
            terms.append(torch.trace((b1.T @ b2) @ (a2 @ a1.T)))
        return self.scale * other.scale * torch.stack(terms).sum()

    def _scale_update_(self, s: float) -> None:
        for b in self.B.values():
            b.mul_(s)  # Delta W is linear in B: scaled(1) is this adapter, bit for bit

    def _perturb_(self, eps: float, generator: torch.Generator) -> None:
        for layer, matrix in self.sites:
            for params in (self.A, self.B):
                p = params[_key(layer, matrix)]
                p.copy_(orthogonal_noise(p, eps, generator))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "sites": [list(s) for s in self.sites], "rank": self.rank,
            "alpha": self.alpha, "rslora": self.rslora,
        }  # fmt: skip

    # -- where it acts ----------------------------------------------------------------------
    def entry(self, model: HookedTransformer) -> AdapterSite:
        first = min(layer for layer, _ in self.sites)
        check_layer(model, first)
        return AdapterSite(resid_hook_name(first, "pre"), first)

    @contextlib.contextmanager
    def applied(
        self,
        model: HookedTransformer,
        *,
        start_at_layer: int | None = None,
        response_mask: Bool[Tensor, "batch pos"] | None = None,  # noqa: ARG002 (LoRA acts everywhere)
    ) -> Iterator[HookedTransformer]:
        if start_at_layer is not None and start_at_layer > min(layer for layer, _ in self.sites):
            raise ValueError(
                f"LoRA at blocks {sorted({s[0] for s in self.sites})} cannot act on a forward pass starting at block {start_at_layer}"
            )
        handles = []
        try:
            for layer, matrix in self.sites:
                handles += self._register(model, layer, matrix)
            yield model
        finally:
            for handle in handles:
                handle.remove()

    def _register(self, model: HookedTransformer, layer: int, matrix: Matrix) -> list:
        block = model.blocks[layer]
        d_in, d_out = matrix_shape(model, matrix)
        if self.A[_key(layer, matrix)].shape[1] != d_in or self.B[_key(layer, matrix)].shape[0] != d_out:
            raise ValueError(
                f"LoRA on blocks.{layer}.{matrix} does not fit model {model.cfg.model_name!r}: expected in {d_in}, out {d_out}"
            )
        seen: dict[str, Tensor] = {}

        def add_to_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:  # noqa: ARG001
            update = self.delta(layer, matrix, seen.pop("x"))
            return output + update.reshape(output.shape)

        def remember_output(module: nn.Module, args: tuple, output: Tensor) -> None:  # noqa: ARG001
            seen["x"] = output.flatten(-2) if matrix == "W_O" else output

        def remember_input(module: nn.Module, args: tuple, kwargs: dict) -> None:  # noqa: ARG001
            name = {"W_Q": "query_input", "W_K": "key_input", "W_V": "value_input"}.get(matrix)
            seen["x"] = kwargs[name] if name is not None else (args[0] if args else kwargs["x"])

        attn, mlp = block.attn, block.mlp
        if matrix in ("W_Q", "W_K", "W_V"):
            reader = attn.register_forward_pre_hook(remember_input, with_kwargs=True)
            writer = getattr(attn, {"W_Q": "hook_q", "W_K": "hook_k", "W_V": "hook_v"}[matrix])
        elif matrix == "W_O":
            reader, writer = attn.hook_z.register_forward_hook(remember_output), attn
        elif matrix in ("W_gate", "W_in"):
            reader = mlp.register_forward_pre_hook(remember_input, with_kwargs=True)
            writer = mlp.hook_pre if matrix == "W_gate" or not model.cfg.gated_mlp else mlp.hook_pre_linear
        else:
            reader, writer = mlp.hook_post.register_forward_hook(remember_output), mlp
        return [reader, writer.register_forward_hook(add_to_output)]

    # -- PEFT interchange -------------------------------------------------------------------
    @classmethod
    def from_peft(cls, path: str | Path, model: HookedTransformer) -> LoraAdapter:
        """Load a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""
        path = Path(path)
        config_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
        for p in (config_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p}: missing (a PEFT adapter directory has adapter_config.json and adapter_model.safetensors)"
                )
        config = json.loads(config_path.read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}, not LORA")
        for field in ("rank_pattern", "alpha_pattern"):
            if config.get(field):
                raise ValueError(f"{config_path}: per-module {field} is not supported")
        if config.get("use_dora"):
            raise ValueError(f"{config_path}: DoRA adapters are not LoRA")
        factors: dict[tuple[int, Matrix], dict[str, Tensor]] = {}
        for key, tensor in load_file(str(weights_path)).items():
            match = _PEFT_KEY.search(key)
            if match is None or match.group(2) not in PEFT_NAMES:
                raise ValueError(
                    f"{weights_path}: tensor {key!r} is not a LoRA factor of a known block matrix"
                )
            site = (int(match.group(1)), PEFT_NAMES[match.group(2)])
            factors.setdefault(site, {})[match.group(3)] = tensor
        rank = int(config["r"])
        adapter = cls(
            model, sites=sorted(factors, key=lambda s: (s[0], MATRICES.index(s[1]))), rank=rank,
            alpha=float(config.get("lora_alpha", rank)), rslora=bool(config.get("use_rslora", False)),
        )  # fmt: skip
        with torch.no_grad():
            for (layer, matrix), ab in factors.items():
                for name, params in (("A", adapter.A), ("B", adapter.B)):
                    target = params[_key(layer, matrix)]
                    if name not in ab or ab[name].shape != target.shape:
                        got = "missing" if name not in ab else tuple(ab[name].shape)
                        raise ValueError(
                            f"{weights_path}: lora_{name} of layers.{layer} {matrix} is {got}; model needs {tuple(target.shape)}"
                        )
                    target.copy_(ab[name].float())
        return adapter

    def to_peft(self, path: str | Path, *, base_model_name_or_path: str = "") -> Path:
        """Write this adapter as a PEFT LoRA directory, loadable by `peft.PeftModel.from_pretrained`."""
        names = {v: k for k, v in PEFT_NAMES.items()}
        layers, modules = (
            sorted({layer for layer, _ in self.sites}),
            sorted({names[m] for _, m in self.sites}),
        )
        if len(self.sites) != len(layers) * len(modules):
            raise ValueError(
                "PEFT needs the same modules in every layer; this adapter's sites are not a grid"
            )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer, matrix in self.sites:
            prefix = (
                f"base_model.model.model.layers.{layer}.{_PEFT_PARENT.get(matrix, 'mlp')}.{names[matrix]}"
            )
            tensors[f"{prefix}.lora_A.weight"] = self.A[_key(layer, matrix)].detach().cpu().contiguous()
            tensors[f"{prefix}.lora_B.weight"] = self.B[_key(layer, matrix)].detach().cpu().contiguous()
        save_file(tensors, str(path / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "r": self.rank, "lora_alpha": self.alpha, "use_rslora": self.rslora, "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": False, "target_modules": modules,
            "layers_to_transform": layers,
        }  # fmt: skip
        write_json(path / "adapter_config.json", config)
        return path
