"""A local safetensors checkpoint converted into a HookedTransformer one layer at a time.

Converting through a whole Hugging Face model holds several copies of the weights in host memory
at once (the HF model, TransformerLens's state dict and its float32 processing copy, the
HookedTransformer). Here the HF model is built on the `meta` device (no storage) and the
HookedTransformer directly where it will live, so its parameters are the one copy; then, one group
at a time (one decoder layer, or one parameter outside the layers, tied ones together), that
group's tensors are read from the safetensors files in the target dtype, put into the meta HF
model, and TransformerLens's own converter for the architecture is run on it. The other groups are
still meta, so their entries come out as meta tensors at no cost; the real ones are copied into
the HookedTransformer and the group is put back to meta. Because the converter is TransformerLens's
own, per-architecture quirks (Gemma's scaled embedding and 1 + w norms, grouped-query names) stay
exactly as `get_pretrained_state_dict` computes them.

Host memory: one group's tensors besides the model (on "cuda", about nothing else). Every
parameter of the HookedTransformer must be written; an entry that is never real in any group (it
would need two groups at once) is an error, and a parameter the converter does not produce at all
is zero-filled if it is a bias and an error otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import (
    convert_gemma_weights,
    convert_llama_weights,
    convert_mistral_weights,
    convert_qwen2_weights,
)
from transformers import PreTrainedModel

StateDictConverter = Callable[[PreTrainedModel, HookedTransformerConfig], dict[str, torch.Tensor]]

TL_CONVERTERS: dict[str, StateDictConverter] = {
    "Qwen2ForCausalLM": convert_qwen2_weights,
    "Gemma2ForCausalLM": convert_gemma_weights,
    "LlamaForCausalLM": convert_llama_weights,
    "MistralForCausalLM": convert_mistral_weights,
}
"""The converter `transformer_lens.loading_from_pretrained.get_pretrained_state_dict` runs for each
supported architecture."""

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class WeightFiles:
    """Which safetensors file of a checkpoint directory holds each tensor."""

    path: Path
    file_of: dict[str, Path]

    @classmethod
    def of(cls, path: Path) -> WeightFiles:
        """From `model.safetensors.index.json` when the checkpoint is sharded, else from the header
        of `model.safetensors` (of every `*.safetensors` file if there is none of that name)."""
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls(path, {name: path / file for name, file in weight_map.items()})
        single = path / "model.safetensors"
        file_of = {}
        for file in [single] if single.is_file() else sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                file_of.update(dict.fromkeys(f.keys(), file))
        return cls(path, file_of)

    def read(self, names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The tensors `names`, cast to `dtype`, on the host. Each file is opened only for the
        duration of the read, so its mapped pages do not stay resident."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.file_of[name], []).append(name)
        tensors = {}
        for file, file_names in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name in file_names:
                    tensors[name] = f.get_tensor(name).to(dtype)
        return tensors


@dataclass(frozen=True)
class ParameterGroup:
    """HF parameters converted together: one decoder layer, or one parameter outside the layers.

    Each entry of `aliases` lists the names under which one parameter appears (tied embeddings
    appear as both `model.embed_tokens.weight` and `lm_head.weight`)."""

    label: str
    aliases: tuple[tuple[str, ...], ...]


def parameter_groups(hf_model: PreTrainedModel) -> list[ParameterGroup]:
    """The groups of `hf_model`'s parameters, in the model's order."""
    names_of: dict[int, list[str]] = {}
    for name, param in hf_model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    members: dict[str, list[tuple[str, ...]]] = {}
    for names in names_of.values():
        layer = _LAYER.search(names[0])
        members.setdefault(f"layer {layer.group(1)}" if layer else names[0], []).append(tuple(names))
    return [ParameterGroup(label, tuple(aliases)) for label, aliases in members.items()]


@dataclass
class _Written:
    """The TransformerLens names the converter produced so far, and those written into the model."""

    produced: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)


def _set_parameter(hf_model: nn.Module, name: str, param: nn.Parameter) -> None:
    module_name, _, leaf = name.rpartition(".")
    setattr(hf_model.get_submodule(module_name), leaf, param)


@contextlib.contextmanager
def _materialized(
    hf_model: PreTrainedModel, group: ParameterGroup, weights: WeightFiles, dtype: torch.dtype
) -> Iterator[None]:
    """Within: `group`'s parameters of the meta `hf_model` hold the checkpoint's tensors."""
    sources = {}
    for names in group.aliases:
        source = next((name for name in names if name in weights.file_of), None)
        if source is None:
            raise ValueError(
                f"{weights.path}: no tensor {' or '.join(names)} in the checkpoint's safetensors files"
            )
        sources[names] = source
    tensors = weights.read(list(sources.values()), dtype)
    originals = {}
    try:
        for names, source in sources.items():
            original = hf_model.get_parameter(names[0])
            if tuple(tensors[source].shape) != tuple(original.shape):
                raise ValueError(
                    f"{weights.path}: tensor {source} has shape {list(tensors[source].shape)}, but the "
                    f"model's config gives {names[0]} shape {list(original.shape)}"
                )
            real = nn.Parameter(tensors.pop(source), requires_grad=False)
            for name in names:
                originals[name] = original
                _set_parameter(hf_model, name, real)
        yield
    finally:
        for name, original in originals.items():  # back to meta: the group's tensors are freed
            _set_parameter(hf_model, name, original)


def _copy_real_entries(
    model: HookedTransformer, state_dict: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
    done: _Written,
) -> None:  # fmt: skip
    for key, value in state_dict.items():
        done.produced.add(key)
        # Keys the model lacks are ignored, as `load_state_dict(strict=False)` does; an entry real
        # in several groups depends on none of their weights (a constant), so once is enough.
        if value.is_meta or key in done.written or key not in targets:
            continue
        target = targets[key]
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(
                f"the {model.cfg.original_architecture} conversion gives {key} shape "
                f"{list(value.shape)}, but the model has {list(target.shape)}"
            )
        target.copy_(value)
        done.written.add(key)


def _check_all_written(model: HookedTransformer, done: _Written, path: Path) -> None:
    for name, param in model.named_parameters():
        if name in done.written:
            continue
        leaf = name.rpartition(".")[2]
        if name in done.produced:
            raise ValueError(
                f"{path}: {name} depends on weights of more than one layer group; this checkpoint "
                "cannot be converted layer by layer"
            )
        if leaf == "b" or leaf.startswith(("b_", "_b_")):
            # A bias the architecture does not have: zero, where TL's fill_missing_keys would keep
            # the uninitialised value of a model built with init_weights=False.
            param.zero_()
            continue
        raise ValueError(f"{path}: the {model.cfg.original_architecture} conversion gives no {name}")


def load_weights_by_group(
    model: HookedTransformer, hf_model: PreTrainedModel, path: Path, dtype: torch.dtype
) -> HookedTransformer:
    """Fill `model`'s parameters from checkpoint directory `path`, one group of `hf_model` (built
    on the meta device from the checkpoint's config) at a time, in `dtype`."""
    architecture = model.cfg.original_architecture
    converter = TL_CONVERTERS[architecture]
    # Llama's converter moves W_O to cfg.device, which a meta tensor cannot do; with None every
    # entry stays where its HF tensor is, and its zero biases are made on the host.
    converter_cfg = copy.copy(model.cfg)
    converter_cfg.device = None
    weights = WeightFiles.of(path)
    targets = model.state_dict(keep_vars=True)  # parameters and persistent buffers, by TL name
    done = _Written()
    with torch.no_grad():
        for group in parameter_groups(hf_model):
            with _materialized(hf_model, group, weights, dtype):
                try:
                    state_dict = converter(hf_model, converter_cfg)
                except (RuntimeError, NotImplementedError) as err:  # it used a meta tensor's data
                    raise ValueError(
                        f"{path}: TransformerLens's {architecture} conversion fails with only "
                        f"{group.label} loaded ({err}); this checkpoint cannot be converted layer by layer"
                    ) from err
                _copy_real_entries(model, state_dict, targets, done)
                del state_dict
        _check_all_written(model, done, path)
    return model
