"""misalign-lens mechanics: models as HookedTransformers, chat batches, residual-stream hooks,
adapters (steering vectors, LoRA as hooks) and their training, saved artifacts. Nothing here
prints or plots (the finetuning progress bar aside)."""

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

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterStack",
    "ArtifactMeta",
    "ChatBatch",
    "FinetuneConfig",
    "NonFiniteError",
    "FinetuneResult",
    "KLSchedule",
    "LabelRule",
    "LoadingFlags",
    "LoraAdapter",
    "MeanDiff",
    "ModelInfo",
    "SteeringVector",
    "StepRecord",
    "TokenizedChat",
    "ablation",
    "ablation_hooks",
    "ablation_matrix",
    "artifact_meta",
    "cache_residuals",
    "chat_batch",
    "check_compatible",
    "check_layer",
    "collate",
    "default_layer",
    "direction_steering",
    "finetune",
    "load_adapter",
    "load_artifact",
    "load_chat_dataset",
    "load_model",
    "load_vector",
    "mean_diff",
    "misalignment_direction",
    "model_info",
    "orthogonal_noise",
    "prompt_batch",
    "random_like",
    "read_chat_jsonl",
    "render_chat",
    "resid_hook",
    "resid_hook_name",
    "save_adapter",
    "save_artifact",
    "save_vector",
    "steering",
    "steering_hooks",
    "stream_ablation",
    "tokenize_chat",
    "tokenize_prompt",
]
