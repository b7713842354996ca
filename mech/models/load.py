"""`load_model`: any supported model as a HookedTransformer, offline.

Processing flags. By default nothing is folded or centred (`LoadingFlags()`): weights and
residuals stay in the Hugging Face model's own coordinates, so a PEFT adapter maps one-to-one onto
TransformerLens matrices, vectors carry over between HF-based tools and ours, and bf16 models are
not processed at reduced precision. On RMSNorm models (Qwen2, Gemma-2) folding and centring would
not change residuals anyway; on LayerNorm models centring changes residual coordinates and vector
norms. The flags used are recorded on the model (`model_info`) and stored with every saved vector.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as tl_loading
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from mech._quiet import hooked_transformer, quiet_deprecation, quiet_hf
from mech.models.hf_convert import checkpoint_architecture, config_from_local
from mech.models.placement import cuda_devices, split_over
from mech.models.safetensors_loading import load_weights_by_group
from mech.models.tokenizer import load_tokenizer

TOY_NAME = "toy"
_INFO_ATTR = "_misalign_lens_info"


@dataclass(frozen=True)
class LoadingFlags:
    """TransformerLens weight processing applied at load time (see the module docstring)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from; saved artefacts are checked against it."""

    name: str
    """Official TransformerLens name, resolved checkpoint path, or "toy"."""
    flags: LoadingFlags
    adapter: str | None = None
    """Path of the PEFT adapter merged into the weights, if any."""


def model_info(model: HookedTransformer) -> ModelInfo:
    """The `ModelInfo` of a model from `load_model`; for a hand-built model, its cfg name, unprocessed."""
    info = getattr(model, _INFO_ATTR, None)
    return info if info is not None else ModelInfo(name=model.cfg.model_name, flags=LoadingFlags())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _unknown_model_error(name: str) -> ValueError:
    known = list(tl_loading.OFFICIAL_MODEL_NAMES)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}: not a TransformerLens official name, not an existing local "
        f"checkpoint directory, and not {TOY_NAME!r}.{hint}"
    )


def _read_adapter_config(adapter: Path) -> dict:
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(f"adapter {adapter}: no adapter_config.json (not a PEFT adapter directory)")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"adapter {adapter}: no adapter_model.safetensors (pickled .bin adapters are refused)"
        )
    return json.loads(config_path.read_text())


def _check_adapter_fits(hf_model: PreTrainedModel, adapter: Path, base_name: str) -> None:
    """Fail with the module and shapes named when an adapter was made for another base model."""
    from safetensors import safe_open

    declared = _read_adapter_config(adapter).get("base_model_name_or_path")
    made_for = f" (made for {declared!r})" if declared else ""
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            try:
                module = hf_model.get_submodule(module_name)
            except AttributeError:
                raise ValueError(
                    f"adapter {adapter}{made_for} targets module {module_name!r} which model "
                    f"{base_name!r} does not have ({hf_model.config.num_hidden_layers} layers)"
                ) from None
            shape = tuple(f.get_slice(key).get_shape())
            if ".lora_A." in key and shape[1] != module.in_features:
                expected, got = module.in_features, shape[1]
            elif ".lora_B." in key and shape[0] != module.out_features:
                expected, got = module.out_features, shape[0]
            else:
                continue
            raise ValueError(
                f"adapter {adapter}{made_for} does not fit model {base_name!r}: {key} has shape "
                f"{list(shape)}, but {module_name} has width {expected} (adapter: {got})"
            )


def _merge_adapter(hf_model: PreTrainedModel, adapter: Path, base_name: str) -> PreTrainedModel:
    from peft import PeftModel

    _check_adapter_fits(hf_model, adapter, base_name)
    return PeftModel.from_pretrained(hf_model, str(adapter)).merge_and_unload()


def _checkpoint_architecture(path: Path) -> str:
    """The architecture checkpoint directory `path` declares, checked before any weights are read."""
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise ValueError(
                f"{path} is a PEFT adapter, not a model: pass its base model as name_or_path "
                f"and this directory as adapter="
            )
        raise ValueError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise ValueError(
            f"{path}: no *.safetensors weights; pickled checkpoints (pytorch_model.bin) are refused, "
            "convert them with transformers' save_pretrained(safe_serialization=True) where you trust them"
        )
    # The architecture comes from config.json; the folder's name plays no part (TransformerLens's
    # own converter branches on substrings of it).
    try:
        declared = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}/config.json: not valid JSON ({err})") from None
    return checkpoint_architecture(path, declared.get("architectures"), declared.get("model_type"))


def _check_model_class(path: Path, hf_model: PreTrainedModel, architecture: str) -> None:
    if type(hf_model).__name__ != architecture:
        raise ValueError(
            f"{path}: config.json declares {architecture}, but its model_type "
            f"{hf_model.config.model_type!r} loads as {type(hf_model).__name__}"
        )


def _load_local(
    path: Path, adapter: Path | None, flags: LoadingFlags, device: str | None, dtype: torch.dtype,
    n_ctx: int | None, *, via_hf_model: bool = False,
) -> HookedTransformer:  # fmt: skip
    """A local checkpoint as a HookedTransformer.

    By default the weights are read layer by layer from the safetensors files
    (`mech.models.safetensors_loading`): the host holds about one copy of them, and on "cuda" only
    one layer's tensors at a time. Through the whole Hugging Face model instead (several copies at
    once) when an `adapter` is merged (PEFT merges into a complete HF model) or `flags` fold or
    centre anything (that processing acts on the whole state dict); `via_hf_model=True` forces
    that path (the loading benchmark and tests compare the two).
    """
    architecture = _checkpoint_architecture(path)
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    if via_hf_model or adapter is not None or flags != LoadingFlags():
        return _load_local_via_hf_model(path, hf_config, architecture, adapter, flags, device, dtype, n_ctx)
    with torch.device("meta"):  # the HF modules only: their weights come one layer at a time
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="eager")
    _check_model_class(path, hf_model, architecture)
    cfg = config_from_local(path, hf_config, fold_ln=False, dtype=dtype, device=device, n_ctx=n_ctx)
    tokenizer = load_tokenizer(path)
    with torch.device(cfg.device):  # the parameters are allocated where they will live, once
        model = hooked_transformer(cfg, tokenizer, move_to_device=False)
    load_weights_by_group(model, hf_model, path, dtype)
    return model.to(cfg.device, print_details=False)


def _load_local_via_hf_model(
    path: Path, hf_config: PretrainedConfig, architecture: str, adapter: Path | None, flags: LoadingFlags,
    device: str | None, dtype: torch.dtype, n_ctx: int | None,
) -> HookedTransformer:  # fmt: skip
    hf_model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, local_files_only=True, attn_implementation="eager", use_safetensors=True
    )
    _check_model_class(path, hf_model, architecture)
    if adapter is not None:
        hf_model = _merge_adapter(hf_model, adapter, str(path))
    tokenizer = load_tokenizer(path)
    cfg = config_from_local(path, hf_config, fold_ln=flags.fold_ln, dtype=dtype, device=device, n_ctx=n_ctx)
    state_dict = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
    model = hooked_transformer(cfg, tokenizer, move_to_device=False)
    with quiet_deprecation():
        model.load_and_process_state_dict(state_dict, **flags.to_dict())
    return model.to(cfg.device, print_details=False)


def _load_official(
    name: str, adapter: Path | None, flags: LoadingFlags, device: str | None, dtype: torch.dtype,
    n_ctx: int | None,
) -> HookedTransformer:  # fmt: skip
    official = tl_loading.get_official_model_name(name)
    hf_model = None
    try:
        if adapter is not None:
            hf_model = AutoModelForCausalLM.from_pretrained(
                official, dtype=dtype, local_files_only=_offline(), use_safetensors=True
            )
            hf_model = _merge_adapter(hf_model, adapter, official)
        with quiet_deprecation():
            return HookedTransformer.from_pretrained(
                official, hf_model=hf_model, device=device, dtype=dtype, n_ctx=n_ctx, **flags.to_dict()
            )
    except OSError as err:
        raise ValueError(
            f"model {official!r} could not be loaded from the local Hugging Face cache "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {err}"
        ) from err


def _load_toy(
    name: str, path: Path, adapter: Path | None, flags: LoadingFlags, device: str | None, dtype: torch.dtype
) -> HookedTransformer:
    from mech.toy.checkpoint import DEFAULT_NAME, load_organism

    if adapter is not None:
        raise ValueError(
            "the toy organism takes no PEFT adapter; train adapters on it with python -m mech.training"
        )
    if flags != LoadingFlags():
        raise ValueError("the toy organism is stored unprocessed; load it with the default LoadingFlags()")
    if (path / "organism.json").is_file():
        return load_organism(path, device=device, dtype=dtype)
    return load_organism(name.partition(":")[2] or DEFAULT_NAME, device=device, dtype=dtype)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    flags: LoadingFlags = LoadingFlags(),
    n_ctx: int | None = None,
    n_devices: int = 1,
) -> HookedTransformer:
    """Load a model as a `HookedTransformer`.

    Args:
        name_or_path: a TransformerLens official name (from the local HF cache when offline), a
            local Hugging Face checkpoint directory (converted without the hub), "toy" (the shipped
            organism), "toy:NAME" (a shipped variant) or an organism directory.
        adapter: a PEFT LoRA adapter directory, merged into the base weights before conversion.
            A local checkpoint is otherwise read layer by layer from its safetensors files, holding
            about one copy of the weights in host memory (on "cuda", only one layer's tensors);
            an adapter or processing `flags` need the whole Hugging Face model (several copies).
        device, dtype: where and in which precision the model lives.
        flags: TransformerLens processing (default none; see the module docstring).
        n_ctx: context length override (TransformerLens allocates n_ctx x n_ctx masks per layer).
        n_devices: split the blocks over this many consecutive GPUs from `device` (default
            cuda:0), where TransformerLens's forward pass sends them (`mech.models.placement`);
            the model is converted in host memory first.

    Example (not run)::

        model = load_model("Qwen/Qwen2.5-14B-Instruct", dtype="bfloat16", device="cuda")
        finetune = load_model("Qwen/Qwen2.5-14B-Instruct", adapter="path/to/em_adapter")
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    split = cuda_devices(n_devices, device) if n_devices > 1 else None
    if split is not None:
        device = "cpu"  # converted on the host, then each block goes to its GPU
    adapter_path = Path(adapter).resolve() if adapter is not None else None
    if adapter_path is not None and not adapter_path.is_dir():
        raise ValueError(f"adapter {adapter}: no such directory")
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name == TOY_NAME or name.startswith(f"{TOY_NAME}:") or (path / "organism.json").is_file():
        model = _load_toy(name, path, adapter_path, flags, device, dtype)
        name = str(path.resolve()) if (path / "organism.json").is_file() else name
    elif path.exists():
        if not path.is_dir():
            raise ValueError(f"{path}: a model path must be a checkpoint directory, not a file")
        path = path.resolve()
        with quiet_hf():
            model = _load_local(path, adapter_path, flags, device, dtype, n_ctx)
        name = str(path)
    else:
        try:
            tl_loading.get_official_model_name(name)
        except ValueError:
            raise _unknown_model_error(name) from None
        with quiet_hf():
            model = _load_official(name, adapter_path, flags, device, dtype, n_ctx)
    if split is not None:
        split_over(model, split)
    info = ModelInfo(name=name, flags=flags, adapter=str(adapter_path) if adapter_path else None)
    setattr(model, _INFO_ATTR, info)
    return model
