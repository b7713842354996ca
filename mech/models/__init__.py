"""Stage 1, the model: `load_model` (toy organism, local HF checkpoints, tiny random-weight
checkpoints of real architectures) as a HookedTransformer, HF config conversion, tokenizers, and
chat formatting with the response mask every later stage trains and measures on; for sampling,
`fast_decode` (sdpa attention from `sdpa`, uncopied weights, fused norms) and `kv_cache` (a KV
cache written in place)."""
