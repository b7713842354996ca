"""The Hugging Face model's own log-probabilities for a checkpoint, the reference our conversions
are compared against."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from mech._quiet import quiet_hf


def hf_logprobs(path, tokens, attention_mask=None, adapter=None) -> torch.Tensor:
    """Log-probs of `tokens` under the checkpoint at `path` (eager attention), with a PEFT
    `adapter` on top if given."""
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    if adapter is not None:
        from peft import PeftModel

        with quiet_hf():
            hf = PeftModel.from_pretrained(hf, str(adapter))
    with torch.no_grad():
        return hf(tokens, attention_mask=attention_mask).logits.log_softmax(-1)
