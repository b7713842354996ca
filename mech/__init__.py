"""misalign-lens mechanics: models as HookedTransformers, chat batches, residual-stream hooks,
and saved vectors/adapters. Nothing here prints or plots."""

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
from mech.model import LoadingFlags, ModelInfo, load_model, model_info

__version__ = "0.1.0"

__all__ = [
    "ArtifactMeta",
    "ChatBatch",
    "LoadingFlags",
    "ModelInfo",
    "TokenizedChat",
    "ablation",
    "ablation_hooks",
    "artifact_meta",
    "cache_residuals",
    "chat_batch",
    "check_compatible",
    "check_layer",
    "collate",
    "default_layer",
    "load_artifact",
    "load_model",
    "load_vector",
    "model_info",
    "prompt_batch",
    "render_chat",
    "resid_hook",
    "resid_hook_name",
    "save_artifact",
    "save_vector",
    "steering",
    "steering_hooks",
    "tokenize_chat",
    "tokenize_prompt",
]
