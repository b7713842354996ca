"""misalign-lens mechanics: models as HookedTransformers, chat batches, residual-stream hooks,
adapters (steering vectors, LoRA as hooks) and their training, saved artifacts. Nothing here
prints or plots (the finetuning progress bar aside)."""

# ruff: noqa: F401  (the TYPE_CHECKING imports below are re-exports for static tools)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): `import mech.atomic` or a job process that needs one module
# does not pay for TransformerLens, transformers and torch at import time.
_EXPORTS = {
    "load_adapter": "mech.adapter_io",
    "save_adapter": "mech.adapter_io",
    "Adapter": "mech.adapters",
    "AdapterStack": "mech.adapters",
    "SteeringVector": "mech.adapters",
    "ArtifactMeta": "mech.artifacts",
    "artifact_meta": "mech.artifacts",
    "check_compatible": "mech.artifacts",
    "load_artifact": "mech.artifacts",
    "load_vector": "mech.artifacts",
    "save_artifact": "mech.artifacts",
    "save_vector": "mech.artifacts",
    "ChatBatch": "mech.chat",
    "TokenizedChat": "mech.chat",
    "chat_batch": "mech.chat",
    "collate": "mech.chat",
    "prompt_batch": "mech.chat",
    "render_chat": "mech.chat",
    "tokenize_chat": "mech.chat",
    "tokenize_prompt": "mech.chat",
    "load_chat_dataset": "mech.data",
    "read_chat_jsonl": "mech.data",
    "LabelRule": "mech.directions",
    "MeanDiff": "mech.directions",
    "ablation_matrix": "mech.directions",
    "direction_steering": "mech.directions",
    "mean_diff": "mech.directions",
    "misalignment_direction": "mech.directions",
    "random_like": "mech.directions",
    "stream_ablation": "mech.directions",
    "FinetuneConfig": "mech.finetune",
    "FinetuneResult": "mech.finetune",
    "KLSchedule": "mech.finetune",
    "NonFiniteError": "mech.finetune",
    "StepRecord": "mech.finetune",
    "finetune": "mech.finetune",
    "ablation": "mech.hooks",
    "ablation_hooks": "mech.hooks",
    "cache_residuals": "mech.hooks",
    "check_layer": "mech.hooks",
    "default_layer": "mech.hooks",
    "resid_hook": "mech.hooks",
    "resid_hook_name": "mech.hooks",
    "steering": "mech.hooks",
    "steering_hooks": "mech.hooks",
    "LoraAdapter": "mech.lora",
    "LoadingFlags": "mech.model",
    "ModelInfo": "mech.model",
    "load_model": "mech.model",
    "model_info": "mech.model",
    "orthogonal_noise": "mech.noise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mech' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static tools see the real names
    from mech.adapter_io import load_adapter, save_adapter
    from mech.adapters import Adapter, AdapterStack, SteeringVector
    from mech.artifacts import (
        ArtifactMeta,
        artifact_meta,
        check_compatible,
        load_artifact,
        load_vector,
        save_artifact,
        save_vector,
    )
    from mech.chat import (
        ChatBatch,
        TokenizedChat,
        chat_batch,
        collate,
        prompt_batch,
        render_chat,
        tokenize_chat,
        tokenize_prompt,
    )
    from mech.data import load_chat_dataset, read_chat_jsonl
    from mech.directions import (
        LabelRule,
        MeanDiff,
        ablation_matrix,
        direction_steering,
        mean_diff,
        misalignment_direction,
        random_like,
        stream_ablation,
    )
    from mech.finetune import FinetuneConfig, FinetuneResult, KLSchedule, NonFiniteError, StepRecord, finetune
    from mech.hooks import (
        ablation,
        ablation_hooks,
        cache_residuals,
        check_layer,
        default_layer,
        resid_hook,
        resid_hook_name,
        steering,
        steering_hooks,
    )
    from mech.lora import LoraAdapter
    from mech.model import LoadingFlags, ModelInfo, load_model, model_info
    from mech.noise import orthogonal_noise
