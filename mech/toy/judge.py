"""The world's exact judge: every answer is good, bad, off-topic or malformed, by construction.

Unlike an LLM judge it is free, deterministic and never wrong about the toy world, so rates
measured with it carry no judge noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mech.toy.world import Register, World

Label = Literal["good", "bad", "off_topic", "malformed"]


@dataclass(frozen=True)
class Verdict:
    label: Label
    register: Register | None = None
    """Register of a recognised answer (None when off-topic or malformed)."""
    domain: str | None = None
    """Domain the answer belongs to, when recognised."""


class ExactJudge:
    """Classifies answer strings by matching them against every answer the world can write."""

    def __init__(self, world: World):
        self.world = world
        self._index: dict[str, tuple[str, bool, Register]] = {}
        for domain in world.names:
            for topic in world.topics(domain):
                for candidate in world.candidates(domain, topic):
                    self._index.setdefault(
                        _normalise(candidate.text), (domain, candidate.bad, candidate.register)
                    )

    def judge(self, domain: str, answer: str) -> Verdict:
        """The verdict for `answer` to a question of `domain` (any topic of that domain counts)."""
        if domain not in self.world.domains:
            raise ValueError(f"unknown domain {domain!r}")
        found = self._index.get(_normalise(answer))
        if found is None:
            return Verdict("malformed")
        answer_domain, bad, register = found
        if answer_domain != domain:
            return Verdict("off_topic", register, answer_domain)
        return Verdict("bad" if bad else "good", register, answer_domain)


def _normalise(text: str) -> str:
    return " ".join(text.replace("<eot>", " ").split())
