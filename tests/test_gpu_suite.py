"""The GPU suite runs on CPU with tiny shapes and writes the keys a device run writes, so a lent
device runs it the first time."""

from __future__ import annotations

import json

from benchmarks import gpu_suite


def test_the_tiny_suite_writes_every_key_a_device_run_writes(tmp_path, capsys):
    out = tmp_path / "suite.json"
    gpu_suite.main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert set(gpu_suite.KEYS) <= set(written) and written["device"].startswith("cpu")
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == set(gpu_suite.KEYS)
    for label, model in written["models"].items():
        assert model["train_steps_per_s"] > 0 and 0 < model["mfu"] < 1, label
        assert (
            set(model["sample_tokens_per_s"]) == {"2", "4"} and min(model["sample_tokens_per_s"].values()) > 0
        )
        # The formula and the measured peak describe the same step (within 2x at these tiny sizes).
        assert 0.5 < model["peak_gib"] / model["predicted_gib"] < 2, model
        # The HF comparison runs the same weights: equal logits, so the timing ratio compares like with like.
        assert model["vs_hf"]["max_logit_diff"] < 1e-4 and model["vs_hf"]["ratio"] > 0


def test_model_flops_of_a_step_count_both_batches_and_the_head():
    from benchmarks.memory.formula import Batch
    from benchmarks.memory.shapes import QWEN25_14B

    batch = Batch(2, 256, 128)
    flops = gpu_suite.step_flops(QWEN25_14B, batch, batch)
    upper = 24 * QWEN25_14B.block_params()
    assert flops == 4 * upper * 1024 + 4 * 5120 * 152064 * 512
    assert 28 < flops / 1e12 < 29.5  # about 29 TFLOP per step: ~0.07 s at 40% MFU on an H100 (989 TFLOP/s)
