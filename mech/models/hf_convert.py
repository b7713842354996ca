"""HookedTransformer configs built from a local Hugging Face config, with no hub access.

TransformerLens derives most configs from the *official model name* (Gemma-2 dimensions are
hard-coded per name; a local path containing "llama" or "gemma" takes those name branches), which
fails for finetunes saved to disk. For the architectures we target we read the HF config directly;
anything else falls back to TransformerLens's own converter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading
from transformers import PretrainedConfig


def _rope_theta(hf: PretrainedConfig, default: float = 10000.0) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    return float(getattr(hf, "rope_theta", None) or params.get("rope_theta", default))


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
        "default_prepend_bos": False,
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


_CONVERTERS = {"Qwen2ForCausalLM": _qwen2, "Gemma2ForCausalLM": _gemma2}


def config_from_local(
    path: Path,
    hf: PretrainedConfig,
    *,
    fold_ln: bool,
    dtype: torch.dtype,
    device: str | None,
    n_ctx: int | None,
) -> HookedTransformerConfig:
    """A `HookedTransformerConfig` for the checkpoint directory `path` whose HF config is `hf`."""
    architecture = (hf.architectures or ["?"])[0]
    if architecture in _CONVERTERS:
        cfg = _CONVERTERS[architecture](hf)
    else:
        try:
            cfg = tl_loading.convert_hf_model_config(str(path))
        except NotImplementedError as err:
            raise ValueError(
                f"{path}: architecture {architecture} is not supported by TransformerLens ({err})"
            ) from err
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
