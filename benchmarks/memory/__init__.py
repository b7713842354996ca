"""Memory of one `mech.training.engine` step: measured on small models, traced and extrapolated to Qwen2.5.

Three kinds of numbers, never mixed up in the output:

- **measured** (eager, CPU): the shipped toy organism (fp32) and a random-weight Qwen2 with
  Qwen2.5-14B's per-layer shapes but 3 layers and a 16384-token vocabulary (bf16). Components are
  counted with `torch.autograd.graph.saved_tensors_hooks` (unique storages, parameters and the
  cached input excluded) and a step's peak with a dispatch-level allocation tracker (bytes of the
  tensors PyTorch creates, as `torch.cuda.max_memory_allocated` would count them; no allocator
  rounding, CUDA context or cuBLAS workspace);
- **traced** (meta device): the same step replayed on `device="meta"` tensors at the real sizes
  (48/64/80 layers, full vocabulary): every allocation PyTorch would make, with no data and no GPU;
- **extrapolated**: `estimate_step`, a formula with per-token and per-block terms, checked against
  both of the above.

No GPU was used: nothing here is a GPU measurement.

    .venv/bin/python -m benchmarks.memory [--out runs/bench/memory.json] [--markdown FILE]

Prints the measured numbers and the tables; writes everything as JSON to `--out`.
"""
