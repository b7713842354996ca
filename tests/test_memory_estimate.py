"""The memory formula of `benchmarks/memory/` against measurement on tiny Qwen2-shaped models:
saved activations, a finetune step's peak, and the meta-device replay that extrapolates it."""

from __future__ import annotations

import json

import pytest
from tiny_shape import TINY

from benchmarks.memory import formula, measure, shapes


def test_parameter_formula(tiny_qwen2_shaped):
    assert sum(p.numel() for p in tiny_qwen2_shaped.parameters()) == TINY.params()


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_saved_activations_match_formula(tiny_qwen2_shaped, kind):
    s = shapes.dtype_bytes(tiny_qwen2_shaped)
    fit = measure.fit_block_costs(tiny_qwen2_shaped, kind, seq=8)
    for b, p in ((1, 8), (2, 8), (1, 16)):
        expected = fit["blocks"] * formula.block_bytes(TINY, s, b * p, p)
        expected += formula.adapter_saved_bytes(TINY, kind, s, b * p, p)
        assert fit["saved"][f"{b}x{p}"] == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_step_peak_matches_estimate_and_meta_replay(tiny_qwen2_shaped, kind):
    s, batch = shapes.dtype_bytes(tiny_qwen2_shaped), formula.Batch(2, 8, 4)
    batches, residuals = measure.chat_sets(tiny_qwen2_shaped, batch, batch)
    measured = measure.engine_step_peak(tiny_qwen2_shaped, kind, batches, residuals)
    assert measured["peak"] == pytest.approx(
        formula.estimate_step(TINY, kind, s, batch, batch)["total"], rel=0.15
    )
    assert measured["adapter_state"] == pytest.approx(formula.adapter_state_bytes(TINY, kind), rel=0.01)
    meta = shapes.qwen2_model(TINY, dtype=tiny_qwen2_shaped.cfg.dtype, device="meta")
    assert measure.replay_step(meta, kind, batch, batch) == pytest.approx(measured["peak"], rel=0.05)


def _estimate(monkeypatch, capsys, *argv):
    from benchmarks.memory.__main__ import main

    monkeypatch.setattr("sys.argv", ["benchmarks.memory", "--estimate", *argv])
    main()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_estimate_of_a_checkpoint_folder_agrees_with_its_meta_trace(tmp_path, monkeypatch, capsys):
    config = {"model_type": "qwen2", "num_hidden_layers": 8, "hidden_size": 1024, "intermediate_size": 2816,
              "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    row = _estimate(
        monkeypatch, capsys, str(tmp_path), "--batch", "2x64", "--train-size", "500", "--kl-size", "500"
    )
    assert row["layer"] == 4 and row["fits"] == "1 H100"
    assert row["traced_gib"] == pytest.approx(row["gib"], abs=0.01)
    host = _estimate(
        monkeypatch, capsys, str(tmp_path), "--batch", "2x64", "--cache-device", "cpu", "--no-trace"
    )
    assert host["components_gib"]["caches_on_device"] < row["components_gib"]["caches_on_device"]


def test_estimate_of_the_papers_14b_run_fits_an_h100(monkeypatch, capsys):
    """The formula's number for issue 17's run (the trace agrees: docs/scaling.md)."""
    row = _estimate(monkeypatch, capsys, "Qwen/Qwen2.5-14B-Instruct", "--layer", "24", "--adapter", "lora_r1",
                    "--batch", "2x256", "--train-size", "6000", "--kl-size", "6000", "--no-trace")  # fmt: skip
    assert row["gib"] <= 70 and row["fits"] == "1 H100"
    assert row["components_gib"]["weight_copies_avoided"] > 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--batch", "2by256"], "--batch '2by256'"), (["--layer", "48"], "--layer 48: Qwen2.5-14B-Instruct has layers 0..47"),
     (["--batch", "2x64", "--assistant", "64"], "--assistant 64")],
)  # fmt: skip
def test_estimate_names_the_bad_flag(monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit):
        _estimate(monkeypatch, capsys, "Qwen/Qwen2.5-14B-Instruct", "--no-trace", *argv)
    assert message in capsys.readouterr().err
