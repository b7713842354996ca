"""The sampler's counter-based Gumbel noise: SplitMix64 bit for bit, a pure function of (row key,
step, vocabulary index) whatever the batch, uniforms strictly inside (0, 1), and argmax draws
whose frequencies follow the softmax."""

from __future__ import annotations

import math

import pytest
import torch

from mech.evaluation.gumbel import RowNoise, _uniform_, gumbel_noise, row_key

MASK64 = 2**64 - 1


def _splitmix64_output(state: int) -> int:
    """SplitMix64's finaliser on plain python integers (the reference the tensor ops must match)."""
    state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & MASK64
    return state ^ (state >> 31)


def test_the_bits_are_splitmix64_twice_over():
    gamma = 0x9E3779B97F4A7C15
    keys = [row_key(0, "q", 0), row_key(3, "another question", 7), 2**63 - 1, 0]
    for step in (0, 5, 70):  # 70: past the first block of step seeds
        bits = RowNoise(keys, 9, "cpu").bits(step)
        for row, key in enumerate(keys):
            seed = _splitmix64_output((key + (step + 1) * gamma) & MASK64)
            expected = [_splitmix64_output((seed + v * gamma) & MASK64) for v in range(9)]
            assert [b & MASK64 for b in bits[row].tolist()] == expected


def test_a_rows_noise_depends_on_its_key_step_and_index_alone():
    """The same row alone, among others, at another batch position, or in a batch big enough to
    be made in vocabulary chunks: the same noise bit for bit, and the same draw."""
    keys = [row_key(0, f"q{i}", s) for i in range(40) for s in range(5)]  # 200 rows: chunked on CPU
    d_vocab, mine = 3001, keys[17]
    logits = torch.randn(1, d_vocab, generator=torch.Generator().manual_seed(0))
    for step in (0, 63, 64, 200):
        alone = gumbel_noise([mine], step, d_vocab)[0]
        assert RowNoise(keys, d_vocab, "cpu").chunk < d_vocab  # the big batch really is chunked
        for batch in ([mine, keys[3]], [keys[5], keys[9], mine], keys):
            position = batch.index(mine)
            assert torch.equal(gumbel_noise(batch, step, d_vocab)[position], alone)
            drawn = RowNoise(batch, d_vocab, "cpu").sample(logits.expand(len(batch), -1), 0.8, step)
            assert drawn[position] == RowNoise([mine], d_vocab, "cpu").sample(logits, 0.8, step)[0]
    other_step, other_row = gumbel_noise([mine], 1, d_vocab)[0], gumbel_noise([keys[18]], 0, d_vocab)[0]
    assert not torch.equal(other_step, gumbel_noise([mine], 0, d_vocab)[0])
    assert not torch.equal(other_row, gumbel_noise([mine], 0, d_vocab)[0])


def test_row_keys_come_from_seed_question_and_sample():
    assert row_key(0, "q", 1) == row_key(0, "q", 1)
    assert len({row_key(0, "q", 1), row_key(1, "q", 1), row_key(0, "r", 1), row_key(0, "q", 2)}) == 4
    assert 0 <= row_key(5, "x", 3) < 2**63


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uniforms_are_never_0_or_1_and_are_uniform(dtype):
    mantissa = {torch.float64: 52, torch.float32: 23}[dtype]
    extremes = torch.tensor([0, -1, 2**mantissa - 1, 2**mantissa, 1], dtype=torch.int64)
    lowest, step = 2.0 ** -(mantissa + 1), 2.0**-mantissa
    expected = [lowest, 1 - lowest, 1 - lowest, lowest, lowest + step]
    assert _uniform_(extremes.clone(), dtype).tolist() == expected  # exact: k / 2^m + half a step
    uniform = RowNoise(list(range(64)), 8192, "cpu", dtype=dtype).uniform(3).double()
    assert uniform.dtype == torch.float64 and 0 < uniform.min() and uniform.max() < 1
    n = uniform.numel()  # 2^19: the mean's standard error is 0.0004, the variance's 0.0001
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.002)
    assert uniform.var().item() == pytest.approx(1 / 12, abs=0.0006)
    counts = torch.histc(uniform, bins=16, min=0, max=1)
    chi_square = ((counts - n / 16) ** 2 / (n / 16)).sum().item()
    assert chi_square < 45  # 15 degrees of freedom: p < 1e-4 beyond


def test_the_noise_is_standard_gumbel():
    noise = RowNoise(list(range(64)), 8192, "cpu").gumbel(0)
    assert noise.dtype == torch.float64 and torch.isfinite(noise).all()
    assert noise.mean().item() == pytest.approx(0.5772156649, abs=0.01)  # Euler's constant
    assert noise.var().item() == pytest.approx(math.pi**2 / 6, abs=0.03)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draw_frequencies_follow_the_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, -3.0])
    rows, steps = 2000, 10
    noise = RowNoise([row_key(1, f"q{i}", 0) for i in range(rows)], len(logits), "cpu")
    draws = torch.cat([noise.sample(logits.expand(rows, -1), temperature, step) for step in range(steps)])
    observed = torch.bincount(draws, minlength=len(logits)).double()
    expected = torch.softmax(logits.double() / temperature, dim=0) * rows * steps
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 25  # 5 degrees of freedom: p < 2e-4 beyond


def test_the_sampler_makes_no_generator_and_never_needs_the_host(monkeypatch):
    """On the meta device nothing can be read back to the host: a draw that needed a value there
    (an .item(), a python loop over rows' tensors) or a tensor made elsewhere would raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("the sampler made a torch.Generator or drew from torch's generators")

    for name in ("Generator", "rand", "rand_like", "randint", "multinomial"):
        monkeypatch.setattr(torch, name, refuse)
    noise = RowNoise([row_key(0, f"q{i}", 0) for i in range(4)], 50, "meta")
    logits = torch.empty(4, 50, device="meta")
    for step in range(3):
        chosen = noise.sample(logits, 0.7, step)
        assert chosen.device.type == "meta" and chosen.shape == (4,)
    chunked = RowNoise(list(range(600)), 3000, "cpu")  # on CPU, without torch's generators either
    assert chunked.chunk < 3000 and chunked.sample(torch.zeros(600, 3000), 1.0, 0).shape == (600,)


def test_noise_on_mps_is_float32_elsewhere_float64():
    from mech.evaluation.gumbel import noise_dtype

    assert noise_dtype(torch.device("mps")) == torch.float32
    assert noise_dtype(torch.device("cpu")) == noise_dtype(torch.device("cuda")) == torch.float64
