"""The one place where third-party noise is silenced: TransformerLens's HookedTransformer
deprecation warning (and its stdout chatter), the deprecation of `transformer_lens.utils` that
importing sae_lens raises, transformers' progress bars and peft's deprecation.

TransformerLens 3.x marks `HookedTransformer` as deprecated in favour of `TransformerBridge`, but
sae_lens pins `transformer_lens<4`, so we build on `HookedTransformer` on purpose. Everything in
this package that constructs one goes through `quiet_deprecation()`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

_DEPRECATION_PATTERN = r"HookedTransformer(\.from_pretrained)? is deprecated"


@contextlib.contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Silence TransformerLens's HookedTransformer deprecation warning and its prints."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message=_DEPRECATION_PATTERN, category=DeprecationWarning)
        yield


@contextlib.contextmanager
def quiet_sae_lens_import() -> Iterator[None]:
    """Around `import sae_lens`: it imports `transformer_lens.utils`, deprecated in TL 3.x."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The 'utils' module has been deprecated", category=DeprecationWarning
        )
        yield


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hide transformers' progress bars (restoring the caller's setting afterwards) and the
    deprecation warning transformers raises when peft calls `is_gradient_checkpointing`."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def hooked_transformer(
    cfg: HookedTransformerConfig | dict,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **kwargs: object,
) -> HookedTransformer:
    """Construct a `HookedTransformer` from a config, quietly, with exactly the tokenizer given.

    TransformerLens's own `set_tokenizer` swaps in a copy reloaded through `AutoTokenizer` by
    name, which maps a model type (e.g. gemma2) to that model's tokenizer class and so can
    silently change a local word-level tokenizer; we attach the given one as it is.

    >>> model = hooked_transformer(dict(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu"))
    >>> model.cfg.n_layers
    1
    """
    if isinstance(cfg, dict):
        cfg = HookedTransformerConfig(**cfg)
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None  # no loading by name here
    with quiet_deprecation():
        model = HookedTransformer(cfg, None, **kwargs)
    model.cfg.tokenizer_name = tokenizer_name
    if tokenizer is not None:
        if tokenizer.padding_side is None:
            tokenizer.padding_side = "right"
        model.tokenizer = tokenizer
        model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    return model
