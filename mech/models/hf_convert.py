"""HookedTransformer configs built from a local checkpoint's `config.json`, with no hub access.

TransformerLens derives most configs from the *official model name* and picks branches by
substrings of the path (a folder containing "llama" or "gemma-2-" takes those branches, and
"Llama-3.1-8B" gets hard-coded 8B dimensions), so a checkpoint would load or not depending on its
folder's name. Here the architecture comes from `config.json` (`architectures`, else `model_type`)
and every dimension from the HF config; the folder's name is never read. Architectures without a
converter here are refused, naming the ones that have one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig
from transformers import PretrainedConfig


def _rope_theta(hf: PretrainedConfig, default: float = 10000.0) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    return float(getattr(hf, "rope_theta", None) or params.get("rope_theta", default))


def _head_dim(hf: PretrainedConfig) -> int:
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


def _rope_scaling(hf: PretrainedConfig) -> dict[str, Any]:
    """TransformerLens fields for the checkpoint's RoPE scaling; only the kinds TL computes like HF."""
    params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "default":
        return {}
    if rope_type == "llama3":  # Llama-3.1 and later: "NTK-by-parts", as TL's official Llama-3.1 configs
        return {
            "use_NTK_by_parts_rope": True, "NTK_by_parts_factor": float(params["factor"]),
            "NTK_by_parts_low_freq_factor": float(params["low_freq_factor"]),
            "NTK_by_parts_high_freq_factor": float(params["high_freq_factor"]),
            "NTK_original_ctx_len": int(params["original_max_position_embeddings"]),
        }  # fmt: skip
    raise ValueError(
        f"RoPE scaling {rope_type!r} is not supported (only unscaled RoPE and Llama-3's 'llama3')"
    )


def _qwen2(hf: PretrainedConfig) -> dict[str, Any]:
    d_head = hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        "use_attn_scale": True, "initializer_range": hf.initializer_range,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(hf), "rotary_adjacent_pairs": False, "rotary_dim": d_head,
        "tokenizer_prepends_bos": True, "final_rms": True, "gated_mlp": True,
        "default_prepend_bos": False, **_rope_scaling(hf),
    }  # fmt: skip


def _gemma2_attn_types(hf: PretrainedConfig) -> list[str]:
    layer_types = getattr(hf, "layer_types", None)
    if layer_types:
        return ["local" if t == "sliding_attention" else "global" for t in layer_types]
    return ["local" if i % 2 == 0 else "global" for i in range(hf.num_hidden_layers)]


def _gemma2(hf: PretrainedConfig) -> dict[str, Any]:
    return {
        "d_model": hf.hidden_size, "d_head": hf.head_dim, "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_activation,
        "initializer_range": hf.initializer_range, "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf), "rotary_dim": hf.head_dim,
        "positional_embedding_type": "rotary", "use_attn_scale": True,
        # Gemma-2 scales attention by query_pre_attn_scalar, not always d_head (27B differs).
        "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "window_size": hf.sliding_window, "use_local_attn": True,
        "attn_types": _gemma2_attn_types(hf),
        "attn_scores_soft_cap": hf.attn_logit_softcapping or -1.0,
        "output_logits_soft_cap": hf.final_logit_softcapping or -1.0,
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True,
    }  # fmt: skip


def _llama(hf: PretrainedConfig) -> dict[str, Any]:
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("Llama checkpoints with attention or MLP biases are not supported")
    d_head, n_kv = _head_dim(hf), getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        # TL's Llama weight conversion uses grouped-query attention only when this is set.
        "n_key_value_heads": n_kv if n_kv != hf.num_attention_heads else None,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings, "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act, "initializer_range": hf.initializer_range,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(hf), "rotary_adjacent_pairs": False, "rotary_dim": d_head,
        "final_rms": True, "gated_mlp": True, **_rope_scaling(hf),
    }  # fmt: skip


def _mistral(hf: PretrainedConfig) -> dict[str, Any]:
    d_head, window = _head_dim(hf), getattr(hf, "sliding_window", None)
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        # TL's Mistral weight conversion always uses grouped-query attention names.
        "n_key_value_heads": getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings, "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act, "initializer_range": hf.initializer_range,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(hf), "rotary_adjacent_pairs": False, "rotary_dim": d_head,
        # Mistral-7B-v0.1 attends within a sliding window in every layer; v0.2 and later have none.
        "use_local_attn": bool(window), "window_size": window or None,
        "attn_types": ["local"] * hf.num_hidden_layers if window else None,
        "final_rms": True, "gated_mlp": True, **_rope_scaling(hf),
    }  # fmt: skip


_CONVERTERS = {
    "Qwen2ForCausalLM": _qwen2,
    "Gemma2ForCausalLM": _gemma2,
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _mistral,
}
_MODEL_TYPES = {
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(_CONVERTERS)
"""The `config.json` architectures a local checkpoint may declare."""


def checkpoint_architecture(path: Path, architectures: Sequence[str] | None, model_type: str | None) -> str:
    """The supported architecture that checkpoint `path` declares in its config.json.

    `architectures[0]` decides, else `model_type`; the folder's name never does. Anything else is
    a `ValueError` naming the folder, what it declares and the supported architectures.
    """
    architecture = architectures[0] if architectures else _MODEL_TYPES.get(model_type or "")
    if architecture in _CONVERTERS:
        return architecture
    supported = ", ".join(f"{arch} ({kind})" for kind, arch in _MODEL_TYPES.items())
    declared = (
        f"architecture {architecture!r} (model_type {model_type!r})"
        if architecture
        else f"no architectures and model_type {model_type!r}"
    )
    raise ValueError(
        f"{path}: config.json declares {declared}, which cannot be loaded as a local checkpoint; "
        f"supported architectures: {supported}"
    )


def config_from_local(
    path: Path,
    hf: PretrainedConfig,
    *,
    fold_ln: bool,
    dtype: torch.dtype,
    device: str | None,
    n_ctx: int | None,
) -> HookedTransformerConfig:
    """A `HookedTransformerConfig` for the checkpoint directory `path` whose HF config is `hf`.

    Built from `hf` alone: `path` only names the model (`model_name`, `tokenizer_name`) and errors.
    """
    architecture = checkpoint_architecture(path, hf.architectures, getattr(hf, "model_type", None))
    try:
        cfg = _CONVERTERS[architecture](hf)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    cfg.update(
        original_architecture=architecture,
        tokenizer_name=str(path),
        model_name=path.name,
        init_weights=False,
        dtype=dtype,
        from_checkpoint=False,
    )
    cfg.setdefault("default_prepend_bos", True)
    if device is not None:
        cfg["device"] = device
    if n_ctx is not None:
        cfg["n_ctx"] = n_ctx
    if fold_ln:
        cfg["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(
            cfg["normalization_type"], cfg["normalization_type"]
        )
    return HookedTransformerConfig.from_dict(cfg)
