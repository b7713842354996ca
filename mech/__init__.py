"""misalign-lens mechanics, one subpackage per stage of the pipeline:

    models -> hooks -> adapters -> training -> evaluation -> directions -> verdicts

`models` (load a HookedTransformer, chat formatting), `hooks` (steer, ablate, cache the residual
stream), `adapters` (steering vectors, LoRA as hooks, saving), `training` (the finetuning engine),
`evaluation` (sampling, judges, the paper's rates, loss-landscape probes), `directions` (mean-diff
directions and their ablation), `verdicts` (bootstrap intervals, the verdict rule, margins); `io` is the plumbing they share and `toy` the embedded model
organism. The names below are importable from `mech` itself, on first use. Nothing here prints or
plots (the finetuning progress bar aside)."""

# ruff: noqa: F401  (the TYPE_CHECKING imports below are re-exports for static tools)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): `import mech.io.atomic` or a job process that needs one module
# does not pay for TransformerLens, transformers and torch at import time.
_EXPORTS = {
    "ChatBatch": "mech.models.chat",
    "TokenizedChat": "mech.models.chat",
    "chat_batch": "mech.models.chat",
    "collate": "mech.models.chat",
    "prompt_batch": "mech.models.chat",
    "render_chat": "mech.models.chat",
    "tokenize_chat": "mech.models.chat",
    "tokenize_prompt": "mech.models.chat",
    "LoadingFlags": "mech.models.load",
    "ModelInfo": "mech.models.load",
    "load_model": "mech.models.load",
    "model_info": "mech.models.load",
    "ablation": "mech.hooks",
    "ablation_hooks": "mech.hooks",
    "cache_residuals": "mech.hooks",
    "check_layer": "mech.hooks",
    "default_layer": "mech.hooks",
    "resid_hook": "mech.hooks",
    "resid_hook_name": "mech.hooks",
    "steering": "mech.hooks",
    "steering_hooks": "mech.hooks",
    "ArtifactMeta": "mech.adapters.artifacts",
    "artifact_meta": "mech.adapters.artifacts",
    "check_compatible": "mech.adapters.artifacts",
    "load_artifact": "mech.adapters.artifacts",
    "load_vector": "mech.adapters.artifacts",
    "save_artifact": "mech.adapters.artifacts",
    "save_vector": "mech.adapters.artifacts",
    "Adapter": "mech.adapters.base",
    "AdapterStack": "mech.adapters.base",
    "LoraAdapter": "mech.adapters.lora",
    "orthogonal_noise": "mech.adapters.noise",
    "load_adapter": "mech.adapters.saving",
    "save_adapter": "mech.adapters.saving",
    "SteeringVector": "mech.adapters.steering",
    "FinetuneConfig": "mech.training.config",
    "FinetuneResult": "mech.training.config",
    "KLSchedule": "mech.training.config",
    "NonFiniteError": "mech.training.config",
    "StepRecord": "mech.training.config",
    "load_chat_dataset": "mech.training.data",
    "read_chat_jsonl": "mech.training.data",
    "finetune": "mech.training.engine",
    "SamplingConfig": "mech.evaluation.generate",
    "sample_answers": "mech.evaluation.generate",
    "load_questions": "mech.evaluation.questions",
    "load_judge_prompts": "mech.evaluation.questions",
    "question_set": "mech.evaluation.questions",
    "em_rate": "mech.evaluation.judges.protocol",
    "narrow_rate": "mech.evaluation.judges.protocol",
    "score_frame": "mech.evaluation.judges.protocol",
    "OpenAIJudge": "mech.evaluation.judges.openai_judge",
    "OpenAIJudgeConfig": "mech.evaluation.judges.openai_judge",
    "judge_agreement": "mech.evaluation.judges.agreement",
    "answer_rates": "mech.evaluation.rates",
    "ablation_matrix": "mech.directions.interventions",
    "direction_steering": "mech.directions.interventions",
    "stream_ablation": "mech.directions.interventions",
    "LabelRule": "mech.directions.mean_diff",
    "MeanDiff": "mech.directions.mean_diff",
    "mean_diff": "mech.directions.mean_diff",
    "misalignment_direction": "mech.directions.mean_diff",
    "random_controls": "mech.directions.mean_diff",
    "random_like": "mech.directions.mean_diff",
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
    from mech.adapters.artifacts import (
        ArtifactMeta,
        artifact_meta,
        check_compatible,
        load_artifact,
        load_vector,
        save_artifact,
        save_vector,
    )
    from mech.adapters.base import Adapter, AdapterStack
    from mech.adapters.lora import LoraAdapter
    from mech.adapters.noise import orthogonal_noise
    from mech.adapters.saving import load_adapter, save_adapter
    from mech.adapters.steering import SteeringVector
    from mech.directions.interventions import ablation_matrix, direction_steering, stream_ablation
    from mech.directions.mean_diff import (
        LabelRule,
        MeanDiff,
        mean_diff,
        misalignment_direction,
        random_controls,
        random_like,
    )
    from mech.evaluation.generate import SamplingConfig, sample_answers
    from mech.evaluation.judges.agreement import judge_agreement
    from mech.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
    from mech.evaluation.judges.protocol import em_rate, narrow_rate, score_frame
    from mech.evaluation.questions import load_judge_prompts, load_questions, question_set
    from mech.evaluation.rates import answer_rates
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
    from mech.models.chat import (
        ChatBatch,
        TokenizedChat,
        chat_batch,
        collate,
        prompt_batch,
        render_chat,
        tokenize_chat,
        tokenize_prompt,
    )
    from mech.models.load import LoadingFlags, ModelInfo, load_model, model_info
    from mech.training.config import FinetuneConfig, FinetuneResult, KLSchedule, NonFiniteError, StepRecord
    from mech.training.data import load_chat_dataset, read_chat_jsonl
    from mech.training.engine import finetune
