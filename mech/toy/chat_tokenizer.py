"""The toy organism's word-level tokenizer and chat template.

Chat format: `<bos> <user> question <eot> <assistant> answer <eot> ...`; the generation prompt is
`<assistant>`, and `<eot>` ends every turn (it is the eos token, so generation stops there).
Pre-training documents use `<q>`/`<a>` markers instead of roles.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from mech.models.tokenizer import word_level_tokenizer
from mech.toy.world import ANSWER, BOS, EOT, QUESTION, World

PAD, UNK = "<pad>", "<unk>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
SPECIAL_TOKENS = (PAD, BOS, EOT, UNK, *ROLE_TOKENS, QUESTION, ANSWER)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ ' <' + message['role'] + '> ' + message['content'] + ' <eot>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <assistant>' }}{% endif %}"
)


def toy_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A tokenizer covering every word of `world`; ids are a deterministic function of the world."""
    return word_level_tokenizer(
        world.vocabulary(),
        special_tokens=SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
    )
