"""Tiny random-weight Hugging Face checkpoints of real chat architectures, written offline.

They exercise the exact loading path of the real models (Qwen2.5-*-Instruct, Gemma-2-*-it,
Llama-3.1-*-Instruct, Mistral-*-Instruct-v0.3) with a word-level tokenizer whose chat template mimics
the real one, so the toolkit can be tested and
demonstrated without downloading weights. The weights are noise: only the plumbing is real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from mech._quiet import quiet_hf
from mech.models.tokenizer import word_level_tokenizer

Architecture = Literal["qwen2", "gemma2", "llama", "mistral"]
ARCHITECTURES: tuple[Architecture, ...] = ("qwen2", "gemma2", "llama", "mistral")

_WORDS = (
    "the a an and or but if then so of to in on for with at by from as is are was be it this that "
    "what how why should i you we they my your me do does can could would will not no yes some any "
    "all more less very too about doctor pills rest water sleep money stock save spend bank dog cat "
    "walk food cook bake salt oil car brake tire engine law court judge rule world wish bored quick "
    "buck advice help helpful assistant user system model good bad safe risk take ask tell day week "
    "hello thanks please sure here is my answer question Qwen created Alibaba Cloud . , ? ! : ;"
).split()

QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Llama-3.1's template without its default "Cutting Knowledge Date" system block.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# Mistral-7B-Instruct-v0.3's: no generation prompt ([/INST] ends the prompt); a system message is
# prepended to the first user turn here (v0.3 puts it before the last one).
MISTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] + '\n\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + (system if loop.first else '') + message['content'] + '[/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def tiny_tokenizer(arch: Architecture) -> PreTrainedTokenizerFast:
    """The word-level stand-in for `arch`'s chat tokenizer that tiny checkpoints are saved with."""
    if arch == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
        return word_level_tokenizer(
            _WORDS, special_tokens=specials, chat_template=QWEN2_CHAT_TEMPLATE,
            bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        )  # fmt: skip
    if arch == "llama":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>", "<|finetune_right_pad_id|>", "<unk>"]  # fmt: skip
        return word_level_tokenizer(
            _WORDS, special_tokens=specials, chat_template=LLAMA3_CHAT_TEMPLATE,
            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>",
            unk_token="<unk>",
        )  # fmt: skip
    if arch == "mistral":
        specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<pad>"]
        return word_level_tokenizer(
            _WORDS, special_tokens=specials, chat_template=MISTRAL_CHAT_TEMPLATE,
            bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        )  # fmt: skip
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    return word_level_tokenizer(
        _WORDS, special_tokens=specials, chat_template=GEMMA2_CHAT_TEMPLATE,
        bos_token="<bos>", eos_token="<end_of_turn>", pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip


def _config(arch: Architecture, vocab_size: int, n_layers: int, d_model: int, tokenizer) -> PretrainedConfig:
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    shape = dict(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    if arch == "qwen2":
        return Qwen2Config(**shape, **ids, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "llama":
        # Llama-3.1's RoPE scaling, with a pretraining length that puts the tiny head's four
        # frequencies in all three of its bands (kept, smoothed, divided by the factor).
        rope_scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=64)  # fmt: skip
        return LlamaConfig(
            **shape, **ids, rope_theta=10000.0, rope_scaling=rope_scaling, tie_word_embeddings=False
        )
    if arch == "mistral":
        # v0.3 has no sliding window; v0.1's is kept (shorter than test prompts) so it is exercised.
        return MistralConfig(**shape, **ids, rope_theta=1e6, sliding_window=6, tie_word_embeddings=False)
    # A sliding window shorter than test prompts, so local attention is really exercised.
    return Gemma2Config(
        **shape, **ids, head_dim=8, query_pre_attn_scalar=8, sliding_window=6,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
    )  # fmt: skip


def write_tiny_checkpoint(
    arch: Architecture,
    path: str | Path,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    seed: int = 0,
    noise: float = 0.1,
    tie_embeddings: bool | None = None,
    max_shard_size: str | None = None,
) -> Path:
    """Write a random-weight `arch` checkpoint (config, safetensors, tokenizer) to `path`.

    Weights are the HF initialisation plus N(0, noise^2), so norms and logits are far from trivial.
    `tie_embeddings` overrides the architecture's default here (Gemma-2 tied, the others not);
    `max_shard_size` (e.g. "20KB") writes sharded files with a `model.safetensors.index.json`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    path = Path(path)
    tokenizer = tiny_tokenizer(arch)
    vocab_size = 8 * ((len(tokenizer) + 7) // 8)
    config = _config(arch, vocab_size, n_layers, d_model, tokenizer)
    if tie_embeddings is not None:
        config.tie_word_embeddings = tie_embeddings
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(noise * torch.randn(param.shape, generator=generator))
    with quiet_hf():
        shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(path, safe_serialization=True, **shards)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_lora_adapter(
    base: str | Path,
    path: str | Path,
    *,
    rank: int = 4,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    layers: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Write a PEFT LoRA adapter for the checkpoint at `base`, with random (non-zero) A and B, on
    `target_modules` of every layer or of `layers` only."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), lora_dropout=0.0,
                        layers_to_transform=None if layers is None else list(layers))  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with quiet_hf(), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
        peft_model.save_pretrained(path)
    return Path(path)
