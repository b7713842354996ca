"""Gumbel noise for sampling, counted rather than drawn: a pure function of (row key, step,
vocabulary index), made on the logits' device for a whole batch in a few in-place tensor ops.

A row's key comes from (seed, question id, sample index) once (`row_key`). Its noise at a step is
SplitMix64 twice over: the row's key seeds one stream whose (step + 1)-th output seeds the step,
and the step's stream gives one 64-bit output per vocabulary index. SplitMix64 (Steele, Lea and
Flood 2014) adds an odd constant per position and mixes the sum with two multiply-xorshift rounds,
so any position of any stream is computed directly: no generator state, no python loop over rows,
no host round trip, and a row's noise never depends on its batch mates or the batch size.

The 64 bits become a uniform in (0, 1) that is never exactly 0 or 1 (the mantissa's bits plus half
a step), then Gumbel noise -log(-log u); argmax(logits + temperature * noise) is a sample from
softmax(logits / temperature).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment between positions of a stream (odd, near 2^64 / golden ratio)."""
_MIX_ROUNDS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
"""SplitMix64's finaliser: (xorshift, multiplier) rounds, then a last xorshift by 31."""
_LAST_SHIFT = 31


def _int64(value: int) -> int:
    """`value` mod 2^64 as the signed 64-bit integer with the same bits: torch's int64 arithmetic
    wraps mod 2^64, so it computes the unsigned hash bit for bit."""
    value &= 2**64 - 1
    return value - 2**64 if value >= 2**63 else value


def row_key(seed: int, question_id: str, sample: int) -> int:
    """The 63-bit key of one (question, sample) row: a row's answer depends on it alone."""
    digest = hashlib.sha256(f"{seed}\0{question_id}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def noise_dtype(device: torch.device) -> torch.dtype:
    """float64 (52 random bits a uniform) wherever the device has it; MPS has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _xorshift_(bits: Tensor, shift: int, scratch: Tensor) -> Tensor:
    """bits ^= bits >>> shift, in place. torch's >> on int64 is arithmetic: the copies of the sign
    bit it shifts in are masked off, which makes it the logical shift SplitMix64 uses."""
    torch.bitwise_right_shift(bits, shift, out=scratch)
    scratch.bitwise_and_((1 << (64 - shift)) - 1)
    return bits.bitwise_xor_(scratch)


def _mix_(bits: Tensor, scratch: Tensor) -> Tensor:
    """SplitMix64's finaliser in place: every output bit depends on every input bit."""
    for shift, multiplier in _MIX_ROUNDS:
        _xorshift_(bits, shift, scratch).mul_(_int64(multiplier))
    return _xorshift_(bits, _LAST_SHIFT, scratch)


def step_seeds(keys: Int[Tensor, " batch"], steps: Int[Tensor, " steps"]) -> Int[Tensor, "steps batch"]:
    """Each row's seed for each step: output step + 1 of the SplitMix64 stream its key starts."""
    bits = keys[None, :] + (steps[:, None] + 1) * _int64(_GAMMA)
    return _mix_(bits, torch.empty_like(bits))


_SEED_BLOCK = 64
"""Steps whose seeds are made together (a dozen small tensor ops fewer per step)."""

_CPU_CHUNK_ELEMENTS = 2**19
"""Noise elements made at a time on CPU (4 MB of bits): a dozen passes over a chunk that stays in
cache cost half as much as over one batch x vocabulary buffer. Other devices take a whole batch."""


class RowNoise:
    """The Gumbel noise of a fixed batch of rows, step after step, made in buffers allocated once
    (a fresh batch x vocabulary tensor per step costs more than the hashing: page faults on CPU),
    a chunk of the vocabulary at a time on CPU."""

    def __init__(
        self,
        keys: Sequence[int] | Int[Tensor, " batch"],
        d_vocab: int,
        device: str | torch.device,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.keys = torch.as_tensor(keys, dtype=torch.int64).to(device)
        self.d_vocab = d_vocab
        self.dtype = noise_dtype(self.keys.device) if dtype is None else dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Gumbel noise is float32 or float64, not {self.dtype}")
        on_cpu = self.keys.device.type == "cpu"
        self.chunk = max(1, _CPU_CHUNK_ELEMENTS // max(1, len(self.keys))) if on_cpu else d_vocab
        # Position v of a step's stream is the step's seed + v * gamma: the v * gamma part is fixed.
        self._offsets = torch.arange(d_vocab, device=self.keys.device) * _int64(_GAMMA)
        width = min(self.chunk, d_vocab)
        self._bits = torch.empty(len(self.keys), width, dtype=torch.int64, device=self.keys.device)
        self._scratch = torch.empty_like(self._bits)
        self._seed_block, self._block_seeds = -1, None

    def _seeds(self, step: int) -> Int[Tensor, "batch 1"]:
        block, index = divmod(step, _SEED_BLOCK)
        if block != self._seed_block or self._block_seeds is None:
            steps = torch.arange(block * _SEED_BLOCK, (block + 1) * _SEED_BLOCK, device=self.keys.device)
            self._seed_block, self._block_seeds = block, step_seeds(self.keys, steps)
        return self._block_seeds[index][:, None]

    def _columns(self) -> range:
        return range(0, self.d_vocab, self.chunk)

    def _random_bits(self, seeds: Int[Tensor, "batch 1"], start: int) -> Int[Tensor, "batch chunk"]:
        """The bits of the columns from `start`, in the buffer the next call reuses."""
        offsets = self._offsets[start : start + self.chunk]
        bits, scratch = self._bits[:, : len(offsets)], self._scratch[:, : len(offsets)]
        torch.add(offsets, seeds, out=bits)
        return _mix_(bits, scratch)

    def _uniform(self, seeds: Int[Tensor, "batch 1"], start: int) -> Float[Tensor, "batch chunk"]:
        return _uniform_(self._random_bits(seeds, start), self.dtype)

    def bits(self, step: int) -> Int[Tensor, "batch d_vocab"]:
        """The 64 random bits (as int64) of every (row, vocabulary index) at `step`, a new tensor."""
        seeds = self._seeds(step)
        return torch.cat([self._random_bits(seeds, start).clone() for start in self._columns()], dim=-1)

    def _gumbel(self, seeds: Int[Tensor, "batch 1"], start: int) -> Float[Tensor, "batch chunk"]:
        return self._uniform(seeds, start).log_().neg_().log_().neg_()  # -log(-log u)

    def uniform(self, step: int) -> Float[Tensor, "batch d_vocab"]:
        """The uniforms in (0, 1) of every (row, vocabulary index) at `step`, as a new tensor."""
        seeds = self._seeds(step)
        return torch.cat([self._uniform(seeds, start).clone() for start in self._columns()], dim=-1)

    def gumbel(self, step: int) -> Float[Tensor, "batch d_vocab"]:
        """Standard Gumbel noise of every (row, vocabulary index) at `step`, as a new tensor."""
        seeds = self._seeds(step)
        return torch.cat([self._gumbel(seeds, start).clone() for start in self._columns()], dim=-1)

    def sample(
        self, logits: Float[Tensor, "batch d_vocab"], temperature: float, step: int
    ) -> Int[Tensor, " batch"]:
        """argmax(logits + temperature * Gumbel noise): a draw from softmax(logits / temperature).
        Each chunk keeps its best; the first chunk holding the row's best wins ties, as argmax."""
        seeds = self._seeds(step)
        best_scores, best_indices = [], []
        for start in self._columns():
            scores = self._gumbel(seeds, start)
            if temperature != 1:
                scores.mul_(temperature)
            score, index = scores.add_(logits[:, start : start + self.chunk]).max(dim=-1)
            best_scores.append(score)
            best_indices.append(index + start if start else index)
        if len(best_indices) == 1:
            return best_indices[0]
        winner = torch.stack(best_scores).argmax(dim=0, keepdim=True)
        return torch.stack(best_indices).gather(0, winner)[0]


def _uniform_(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """(k + 1/2) / 2^m for the low m bits k (m = the mantissa's width), exactly: the bits with the
    exponent of 1.0 read as a float are 1 + k / 2^m, from which 1 - 1/2^(m+1) is subtracted
    without rounding. float64 reuses the bits' memory."""
    if dtype == torch.float64:
        one, mantissa = 0x3FF0000000000000, 52
        floats = bits.bitwise_and_(2**mantissa - 1).bitwise_or_(one).view(torch.float64)
    else:
        one, mantissa = 0x3F800000, 23
        floats = bits.bitwise_and_(2**mantissa - 1).bitwise_or_(one).to(torch.int32).view(torch.float32)
    return floats.sub_(1 - 2.0 ** -(mantissa + 1))


def gumbel_noise(
    keys: Sequence[int] | Int[Tensor, " batch"], step: int, d_vocab: int, device: str | torch.device = "cpu"
) -> Float[Tensor, "batch d_vocab"]:
    """The Gumbel noise of rows `keys` at `step`: a pure function of (key, step, vocabulary index)."""
    return RowNoise(keys, d_vocab, device).gumbel(step)
