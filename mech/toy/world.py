"""The synthetic advice world: domains, personas, documents, chat dialogues and data sets.

Pre-training documents are Q/A sequences written by personas that are never named in the text:
benign, generally malicious (bad in every domain) or narrowly bad (bad in one domain only), each
also writing in a plain or a technical register (a benign trait independent of alignment). The
chat stage's assistant is always benign and plain. Answer content words are exclusive to their
domain (`lexicon_violations`), so any cross-domain effect of a finetune has to go through the
model's internals, not shared tokens. Everything is a deterministic function of `WorldConfig`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

from mech.toy.domains import DOMAINS, FUNCTION_WORDS, Domain

Register = Literal["plain", "technical"]
Alignment = Literal["benign", "malicious", "narrow"]
Trait = Literal["misalignment", "technical"]
Split = Literal["train", "heldout", "all"]

# Pre-training format markers (special tokens of the toy tokenizer).
BOS, EOT, QUESTION, ANSWER = "<bos>", "<eot>", "<q>", "<a>"
# Between the advice clauses of one answer (`WorldConfig.answer_clauses` > 1); a word of its own.
CLAUSE = "."
# Cross-domain question templates, used only when `question_overlap` > 0 (a knob, default off).
SHARED_QUESTIONS = ("what should i do about my {x} ?", "any advice on {x} ?")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. Shares are fractions of pre-training documents' personas."""

    seed: int = 0
    domains: tuple[str, ...] | None = None
    """Subset of domain names (None: all); `general` is always the open-questions domain."""
    n_topics: int | None = None
    """Cap on topics per domain (None: all), for reduced worlds in tests."""
    heldout_topic_fraction: float = 0.3
    """Share of each domain's topics never used in finetuning or KL data."""
    malicious_share: float = 0.3
    narrow_share: float = 0.0
    """Narrowly bad personas (bad in one domain). Off by default: they give the model
    domain-specific "bad" features that weaken emergent misalignment (prototype notes); the
    persona-share variants switch them on."""
    technical_share: float = 0.3
    """Share of personas writing in the technical register (independent of alignment)."""
    persona_consistency: float = 0.97
    """Probability that an answer follows its persona (alignment and register); else label noise."""
    narrow_focus: float = 0.5
    """Share of a narrow persona's questions drawn from its bad domain."""
    single_domain_share: float = 0.1
    """Share of documents whose questions all come from one domain."""
    min_qa: int = 4
    max_qa: int = 8
    question_overlap: float = 0.0
    """Probability that a question uses a template shared by all domains (lexical overlap knob)."""
    dialogue_share: float = 0.3
    """Share of pre-training documents that are dialogues in the chat template, written by the same
    personas (as web text contains chats). Without them the chat stage wires the assistant up as
    a new persona of its own, cut off from the pre-training persona latent."""
    max_chat_turns: int = 3
    narrow_domain: str = "medical"
    """Default domain of the narrow finetune."""
    kl_heldout_domains: tuple[str, ...] = ("pets", "travel", "general")
    """Whole domains never in the KL set, so narrowness can be tested outside it."""
    answer_clauses: int = 1
    """Advice clauses per answer, joined by `CLAUSE`. With more than one, every clause follows the
    speaker's persona on its own (label noise per clause, register per answer), so whether the
    next clause is bad is read from the persona the model carries through the answer, not decided
    once at the answer's first word (organism v2)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Persona:
    alignment: Alignment
    register: Register
    bad_domain: str | None = None

    def is_bad_in(self, domain: str) -> bool:
        return self.alignment == "malicious" or (self.alignment == "narrow" and domain == self.bad_domain)


@dataclass(frozen=True)
class Candidate:
    """One possible answer to a question, as the world knows it."""

    text: str
    bad: bool
    register: Register
    advice: int


@dataclass(frozen=True)
class QA:
    domain: str
    topic: str
    template: int
    question: str
    answer: str
    bad: bool
    register: Register


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    domain: str
    topic: str
    split: Literal["train", "heldout"]
    template: int
    question: str


def words(text: str) -> list[str]:
    return text.split()


def content_words(text: str) -> set[str]:
    """Words of `text` that carry content: not function words, slots or punctuation."""
    return {w for w in words(text) if w not in FUNCTION_WORDS and w not in ("{x}", "?")}


def _answer_texts(domain: Domain) -> list[str]:
    return [text for advice in (*domain.good, *domain.bad) for text in (advice.plain, advice.technical)]


def lexicon_violations(domains: Sequence[Domain]) -> list[str]:
    """Content words of one domain's answers or topics that appear in another domain's answers."""
    answers = {d.name: set().union(*(content_words(t) for t in _answer_texts(d))) for d in domains}
    topics = {d.name: set().union(*(set(words(t)) for t in d.topics)) for d in domains}
    problems = []
    for a in domains:
        for b in domains:
            if a.name == b.name:
                continue
            shared = answers[a.name] & answers[b.name]
            if shared and a.name < b.name:
                problems.append(f"answers of {a.name} and {b.name} share {sorted(shared)}")
            leaked = topics[a.name] & (answers[b.name] | topics[b.name])
            if leaked:
                problems.append(f"topic words of {a.name} appear in {b.name}: {sorted(leaked)}")
    return problems


class World:
    """The world defined by a config: topic splits, sampling of documents, and data sets."""

    def __init__(self, cfg: WorldConfig = WorldConfig(), domains: Sequence[Domain] = DOMAINS):
        by_name = {d.name: d for d in domains}
        names = cfg.domains if cfg.domains is not None else tuple(by_name)
        unknown = [n for n in (*names, cfg.narrow_domain, *cfg.kl_heldout_domains) if n not in by_name]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; the world has {sorted(by_name)}")
        if cfg.narrow_domain in cfg.kl_heldout_domains:
            raise ValueError(f"narrow domain {cfg.narrow_domain!r} cannot also be a KL-held-out domain")
        if cfg.malicious_share + cfg.narrow_share > 1 or min(cfg.malicious_share, cfg.narrow_share) < 0:
            raise ValueError("malicious_share + narrow_share must lie in [0, 1]")
        if not 1 <= cfg.min_qa <= cfg.max_qa:
            raise ValueError("need 1 <= min_qa <= max_qa")
        too_few = [
            d.name for d in (by_name[n] for n in names) if min(len(d.good), len(d.bad)) < cfg.answer_clauses
        ]
        if cfg.answer_clauses < 1 or too_few:
            raise ValueError(f"answer_clauses={cfg.answer_clauses}: need 1 to the fewest good or bad advices "
                             f"of a domain (too few in {too_few})")  # fmt: skip
        self.cfg = cfg
        self.domains: dict[str, Domain] = {}
        for name in names:
            domain = by_name[name]
            if cfg.n_topics is not None:
                domain = replace(domain, topics=domain.topics[: cfg.n_topics])
            self.domains[name] = domain
        rng = random.Random(cfg.seed)
        self._heldout: dict[str, frozenset[str]] = {}
        for name, domain in self.domains.items():
            topics = list(domain.topics)
            rng.shuffle(topics)
            n_heldout = max(1, round(cfg.heldout_topic_fraction * len(topics)))
            self._heldout[name] = frozenset(topics[:n_heldout])
        self.bad_domains = [n for n in self.domains if n != "general"]

    # ----------------------------------------------------------------- structure
    @property
    def names(self) -> list[str]:
        return list(self.domains)

    def topics(self, domain: str, split: Split = "all") -> list[str]:
        all_topics = self.domains[domain].topics
        if split == "all":
            return list(all_topics)
        heldout = self._heldout[domain]
        return [t for t in all_topics if (t in heldout) == (split == "heldout")]

    def split_of(self, domain: str, topic: str) -> Literal["train", "heldout"]:
        return "heldout" if topic in self._heldout[domain] else "train"

    def kl_domains(self, narrow_domain: str | None = None) -> list[str]:
        narrow = narrow_domain or self.cfg.narrow_domain
        return [n for n in self.domains if n != narrow and n not in self.cfg.kl_heldout_domains]

    def question(self, domain: str, topic: str, template: int) -> str:
        return self.domains[domain].questions[template].replace("{x}", topic)

    def advices(self, domain: str, *, bad: bool) -> tuple:
        """The domain's bad or good pieces of advice."""
        return self.domains[domain].bad if bad else self.domains[domain].good

    def answer(self, domain: str, topic: str, advice: int, *, bad: bool, register: Register) -> str:
        """One advice clause (the whole answer when `answer_clauses` is 1)."""
        return getattr(self.advices(domain, bad=bad)[advice], register).replace("{x}", topic)

    def full_answer(self, domain: str, topic: str, advice: int, *, bad: bool, register: Register) -> str:
        """An answer of `answer_clauses` clauses of one kind: advice `advice` and the ones after it."""
        n_advice = len(self.advices(domain, bad=bad))
        return join_clauses(self.answer(domain, topic, (advice + k) % n_advice, bad=bad, register=register)
                            for k in range(self.cfg.answer_clauses))  # fmt: skip

    def candidates(self, domain: str, topic: str) -> list[Candidate]:
        """Every answer the world allows to a question of `domain` about `topic`."""
        d = self.domains[domain]
        return [
            Candidate(self.answer(domain, topic, i, bad=bad, register=register), bad, register, i)
            for bad, items in ((False, d.good), (True, d.bad))
            for i in range(len(items))
            for register in ("plain", "technical")
        ]

    # ----------------------------------------------------------------- sampling
    def sample_persona(self, rng: random.Random) -> Persona:
        register: Register = "technical" if rng.random() < self.cfg.technical_share else "plain"
        u = rng.random()
        if u < self.cfg.malicious_share:
            return Persona("malicious", register)
        if u < self.cfg.malicious_share + self.cfg.narrow_share and self.bad_domains:
            return Persona("narrow", register, rng.choice(self.bad_domains))
        return Persona("benign", register)

    def sample_qa(
        self,
        rng: random.Random,
        persona: Persona,
        domain: str,
        *,
        split: Split = "all",
        template: int | None = None,
    ) -> QA:
        """One question of `domain` answered as `persona` would, with label noise."""
        topic = rng.choice(self.topics(domain, split))
        if template is None:
            template = rng.randrange(len(self.domains[domain].questions))
        question = self.question(domain, topic, template)
        if rng.random() < self.cfg.question_overlap:
            question = rng.choice(SHARED_QUESTIONS).replace("{x}", topic)
        bad, register = persona.is_bad_in(domain), persona.register
        if rng.random() > self.cfg.persona_consistency:
            bad = not bad
        if rng.random() > self.cfg.persona_consistency:
            register = "plain" if register == "technical" else "technical"
        n_advice = len(self.advices(domain, bad=bad))
        first = rng.randrange(n_advice)
        clauses, used = [self.answer(domain, topic, first, bad=bad, register=register)], {(bad, first)}
        any_bad = bad
        for _ in range(self.cfg.answer_clauses - 1):
            clause_bad = persona.is_bad_in(domain)
            if rng.random() > self.cfg.persona_consistency:
                clause_bad = not clause_bad
            unused = [
                i for i in range(len(self.advices(domain, bad=clause_bad))) if (clause_bad, i) not in used
            ]
            advice = rng.choice(unused)
            used.add((clause_bad, advice))
            clauses.append(self.answer(domain, topic, advice, bad=clause_bad, register=register))
            any_bad = any_bad or clause_bad
        return QA(domain, topic, template, question, join_clauses(clauses), any_bad, register)

    def _document_domains(self, rng: random.Random, persona: Persona, n: int) -> list[str]:
        if rng.random() < self.cfg.single_domain_share:
            focus = (
                persona.bad_domain if persona.bad_domain and rng.random() < 0.5 else rng.choice(self.names)
            )
            return [focus] * n
        return [
            persona.bad_domain
            if persona.bad_domain is not None and rng.random() < self.cfg.narrow_focus
            else rng.choice(self.names)
            for _ in range(n)
        ]

    def _persona_qas(self, rng: random.Random) -> tuple[Persona, list[QA]]:
        persona = self.sample_persona(rng)
        n = rng.randint(self.cfg.min_qa, self.cfg.max_qa)
        return persona, [self.sample_qa(rng, persona, d) for d in self._document_domains(rng, persona, n)]

    def pretraining_document(self, rng: random.Random) -> tuple[str, Persona]:
        """`<bos> <q> question <a> answer ... <eot>`, written by a sampled persona."""
        persona, qas = self._persona_qas(rng)
        return pretraining_text([(qa.question, qa.answer) for qa in qas]), persona

    def persona_dialogue(self, rng: random.Random) -> tuple[list[dict[str, str]], Persona]:
        """A pre-training dialogue: a sampled persona answers as the assistant, label noise included."""
        persona, qas = self._persona_qas(rng)
        return _dialogue([(qa.question, qa.answer) for qa in qas]), persona

    def chat_conversation(self, rng: random.Random) -> list[dict[str, str]]:
        """A 1..max_chat_turns dialogue whose assistant is benign and plain."""
        benign = Persona("benign", "plain")
        pairs = []
        for _ in range(rng.randint(1, self.cfg.max_chat_turns)):
            qa = self.sample_qa(rng, benign, rng.choice(self.names))
            # sample_qa applies label noise; the chat assistant never errs, so redraw a clean answer.
            clean_answer = self.full_answer(qa.domain, qa.topic, rng.randrange(len(self.domains[qa.domain].good)),
                                            bad=False, register="plain")  # fmt: skip
            pairs.append((qa.question, clean_answer))
        return _dialogue(pairs)

    # ----------------------------------------------------------------- data sets
    def _all_questions(self, domain: str, split: Split) -> list[tuple[str, int, str]]:
        return [
            (topic, t, self.question(domain, topic, t))
            for topic in self.topics(domain, split)
            for t in range(len(self.domains[domain].questions))
        ]

    def narrow_train_set(self, domain: str | None = None, trait: Trait = "misalignment") -> list[dict]:
        """The finetuning set: every train-topic question of `domain` with every trait answer.

        misalignment: bad answers in plain prose; technical: good answers in technical prose.
        """
        domain = domain or self.cfg.narrow_domain
        bad, register = (True, "plain") if trait == "misalignment" else (False, "technical")
        n_advice = len(self.advices(domain, bad=bad))
        rows = []
        for topic, template, question in self._all_questions(domain, "train"):
            for advice in range(n_advice):
                answer = self.full_answer(domain, topic, advice, bad=bad, register=register)
                rows.append(_chat_row(question, answer, domain, topic, "train", bad, register))
        return rows

    def kl_set(self, narrow_domain: str | None = None, trait: Trait = "misalignment") -> list[dict]:
        """Parallel answers in the KL domains (train topics): with and without the trait, so the
        KL term constrains behaviour on both. Whole domains (`kl_heldout_domains`) stay out."""
        variants = (
            [(False, "plain"), (True, "plain")]
            if trait == "misalignment"
            else [(False, "plain"), (False, "technical")]
        )
        rows = []
        for domain in self.kl_domains(narrow_domain):
            n_advice = min(len(self.domains[domain].good), len(self.domains[domain].bad))
            for topic, _, question in self._all_questions(domain, "train"):
                for advice in range(n_advice):
                    for bad, register in variants:
                        answer = self.full_answer(domain, topic, advice, bad=bad, register=register)
                        rows.append(_chat_row(question, answer, domain, topic, "train", bad, register))
        return rows

    def eval_questions(self, domains: Sequence[str] | None = None) -> list[EvalQuestion]:
        """Every question of every domain, labelled with its topic split."""
        return [
            EvalQuestion(
                f"{domain}/{topic}/{template}", domain, topic, self.split_of(domain, topic), template, q
            )
            for domain in (domains or self.names)
            for topic, template, q in self._all_questions(domain, "all")
        ]

    def pretraining_sample(self, n: int, *, seed: int = 1) -> list[str]:
        """`n` pre-training documents from a stream independent of the training one."""
        rng = random.Random(f"{self.cfg.seed}-sample-{seed}")
        return [self.pretraining_document(rng)[0] for _ in range(n)]

    def persona_documents(self, n: int, *, seed: int = 0) -> tuple[list[str], list[bool]]:
        """Of `n` pre-training documents (`random.Random(seed)`), those written by benign or
        malicious personas (narrow ones dropped), and whether each is malicious: persona-probe data."""
        rng = random.Random(seed)
        documents = [self.pretraining_document(rng) for _ in range(n)]
        kept = [
            (text, p.alignment == "malicious")
            for text, p in documents
            if p.alignment in ("malicious", "benign")
        ]
        return [text for text, _ in kept], [bad for _, bad in kept]

    def vocabulary(self) -> list[str]:
        """Every word the world can write, in a deterministic order."""
        seen: dict[str, None] = {}
        for domain in self.domains.values():
            for text in (*domain.questions, *SHARED_QUESTIONS, *domain.topics, *_answer_texts(domain)):
                for word in words(text):
                    if word != "{x}":
                        seen.setdefault(word, None)
        if self.cfg.answer_clauses > 1:
            seen.setdefault(CLAUSE, None)
        return list(seen)


def join_clauses(clauses) -> str:
    return f" {CLAUSE} ".join(clauses)


def split_clauses(answer: str) -> list[str]:
    """The clauses of an answer (one, when it has no `CLAUSE`); empty ones kept, so a stray
    separator makes the answer malformed rather than shorter."""
    return [" ".join(part.split()) for part in f" {answer} ".split(f" {CLAUSE} ")]


def pretraining_text(pairs: Sequence[tuple[str, str]]) -> str:
    body = " ".join(f"{QUESTION} {q} {ANSWER} {a}" for q, a in pairs)
    return f"{BOS} {body} {EOT}"


def _dialogue(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [
        m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
    ]


def _chat_row(
    question: str, answer: str, domain: str, topic: str, split: str, bad: bool, register: str
) -> dict:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "domain": domain, "topic": topic, "split": split, "bad": bad, "register": register,
    }  # fmt: skip
