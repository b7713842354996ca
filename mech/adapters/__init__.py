"""Stage 2, the adapters: finetuning parameterisations that act through hooks at a layer
(`base`: the interface and stacks; `steering`: steering vectors; `lora`: LoRA), the paper's
orthogonal noise (`noise`), and saving them with the model they belong to (`artifacts`, `saving`)."""
