"""The embedded toy model organism of emergent misalignment: a synthetic multi-domain advice world
(`world`), its word-level chat tokenizer, a small Llama-style HookedTransformer pre-trained and
chat-tuned on it on a CPU (`training`), the world's exact judge (`judge`), and the shipped
checkpoints (`checkpoint`, behind `load_model("toy")`)."""
