"""Stage 1, the model: `load_model` (toy organism, local HF checkpoints, tiny random-weight
checkpoints of real architectures) as a HookedTransformer, HF config conversion, tokenizers, and
chat formatting with the response mask every later stage trains and measures on."""
