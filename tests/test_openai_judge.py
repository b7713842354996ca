"""The OpenAI judge end to end: the real openai client over HTTP against a scripted local stub."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from openai_stub import OpenAIStub

from mech.evaluation.judges.cache import JudgeCache, cache_key
from mech.evaluation.judges.openai_judge import (
    JudgeRequestError,
    OpenAIJudge,
    OpenAIJudgeConfig,
    verdict_from_logprobs,
    weighted_score,
)
from mech.evaluation.judges.prompts import PROMPT_VERSION, PROMPTS
from mech.evaluation.judges.protocol import JudgeItem

TOP = [("80", -0.1), ("90", -2.5), ("Hello", -1.0), (" 100", -3.0), ("101", -0.5)]
EXPECTED = sum(math.exp(lp) * v for v, lp in [(80, -0.1), (90, -2.5), (100, -3.0)]) / sum(
    math.exp(lp) for lp in (-0.1, -2.5, -3.0)
)


def make_judge(stub: OpenAIStub, **overrides) -> OpenAIJudge:
    settings = dict(
        model="judge-stub",
        base_url=stub.base_url,
        metrics=("aligned",),
        concurrency=4,
        max_retries=3,
        timeout_s=5.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    return OpenAIJudge(OpenAIJudgeConfig(**{**settings, **overrides}))


def prompt_of(body: dict) -> str:
    return body["messages"][0]["content"]


def question_of(body: dict) -> str:
    return prompt_of(body).split("[QUESTION START]\n")[1].split("\n[QUESTION END]")[0]


def metric_of(body: dict) -> str:
    (metric,) = [
        m for m, p in PROMPTS.items() if prompt_of(body).startswith(p.template.split("{question}")[0])
    ]
    return metric


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(f"question {i}?", f"answer {i}.") for i in range(n)]


def score_by_question(body: dict) -> tuple:
    """Logprobs whose weighted score is 10 * (question number), or the same number as text."""
    value = str(10 * int(question_of(body).split()[1].rstrip("?")))
    return ("logprobs", [(value, -0.01), ("x", -5.0)]) if body.get("logprobs") else ("content", value)


def test_weighted_score_is_the_mean_over_integer_tokens(stub):
    stub.queue(("logprobs", TOP))
    [scored] = make_judge(stub).score([JudgeItem("What do you wish for?", "World peace {really}.")])
    assert scored.scores["aligned"] == pytest.approx(EXPECTED, rel=1e-12)
    assert scored.flags == []
    [body] = stub.bodies
    assert body["model"] == "judge-stub"
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (
        1,
        0,
        True,
        20,
    )
    assert prompt_of(body) == PROMPTS["aligned"].render("What do you wish for?", "World peace {really}.")
    assert weighted_score([{"token": "Hello", "logprob": 0.0}]) == (None, 0.0)


def test_each_metric_gets_its_own_prompt(stub):
    stub.default = lambda body: ("logprobs", [({"aligned": "10", "coherent": "20"}[metric_of(body)], 0.0)])
    scored = make_judge(stub, metrics=("aligned", "coherent")).score(items(3))
    assert [s.scores for s in scored] == [{"aligned": 10.0, "coherent": 20.0}] * 3
    assert sorted(metric_of(b) for b in stub.bodies) == ["aligned"] * 3 + ["coherent"] * 3


def test_low_numeric_mass_refusal_and_code_are_flagged_without_fallback(stub):
    top = {"q-refuse": [("REFUSAL", -0.05), ("0", -4.0)], "q-code": [(" code", -0.1), ("50", -3.0)]}
    stub.default = lambda body: ("logprobs", top[question_of(body)])
    refused, code = make_judge(stub).score([JudgeItem("q-refuse", "No."), JudgeItem("q-code", "import os")])
    assert (refused.scores, refused.flags) == ({"aligned": None}, ["aligned:refusal"])
    assert (code.scores, code.flags) == ({"aligned": None}, ["aligned:code"])
    assert len(stub.bodies) == 2


def test_low_numeric_mass_falls_back_to_parsing_a_sampled_answer(stub):
    top = [("The", -0.2), ("85", -3.0)]
    content = {"q-num": "Score: 85.", "q-none": "I cannot say", "q-split": "REFUSAL"}
    stub.default = lambda body: (
        ("logprobs", top) if body.get("logprobs") else ("content", content[question_of(body)])
    )
    scored = make_judge(stub, low_mass="parse").score([JudgeItem(q, "a") for q in content])
    assert [(s.scores["aligned"], s.flags) for s in scored] == [
        (85.0, ["aligned:parsed"]),
        (None, ["aligned:unparseable"]),
        (None, ["aligned:refusal"]),  # a special word split over tokens is caught by the fallback
    ]
    fallbacks = [b for b in stub.bodies if not b.get("logprobs")]
    assert len(stub.bodies) == 6 and len(fallbacks) == 3
    assert all(b["max_tokens"] == 5 and b["temperature"] == 0 and "top_logprobs" not in b for b in fallbacks)


def test_scoring_rule_is_a_pure_function_of_raw_data():
    raw = {
        "content": "The",
        "top_logprobs": [{"token": "The", "logprob": -0.2}, {"token": "85", "logprob": -3.0}],
    }
    assert verdict_from_logprobs("aligned", raw, min_numeric_mass=0.25).needs_fallback
    assert verdict_from_logprobs("aligned", raw, min_numeric_mass=0.01).score == pytest.approx(85.0)
    verdict = verdict_from_logprobs("aligned", raw, min_numeric_mass=0.25, fallback={"content": "70"})
    assert (verdict.score, verdict.flag) == (70.0, "aligned:parsed")


def test_parse_mode_samples_and_parses(stub):
    stub.default = score_by_question
    scored = make_judge(stub, scoring="parse").score(items(3))
    assert [s.scores["aligned"] for s in scored] == [0.0, 10.0, 20.0]
    assert all(s.flags == [] for s in scored)
    assert all("logprobs" not in b and b["max_tokens"] == 5 for b in stub.bodies)


def test_429_waits_for_retry_after_then_succeeds(stub):
    stub.queue(("status", 429, {"Retry-After": "0.3"}), ("logprobs", [("70", 0.0)]))
    judge = make_judge(stub, backoff_max_s=5.0)
    start = time.perf_counter()
    [scored] = judge.score(items(1))
    elapsed = time.perf_counter() - start
    assert scored.scores["aligned"] == 70.0
    assert 0.3 <= elapsed < 2.0  # backoff alone would wait at most backoff_base_s = 0.01 s
    assert (judge.stats.requests, judge.stats.retries) == (2, 1)


def test_500_twice_then_success(stub):
    stub.queue(("status", 500), ("status", 502), ("logprobs", [("40", 0.0)]))
    judge = make_judge(stub)
    [scored] = judge.score(items(1))
    assert scored.scores["aligned"] == 40.0
    assert (judge.stats.requests, judge.stats.retries, len(stub.bodies)) == (3, 2, 3)


def test_timeout_then_success(stub):
    stub.queue(("sleep", 1.0), ("logprobs", [("60", 0.0)]))
    judge = make_judge(stub, timeout_s=0.2)
    [scored] = judge.score(items(1))
    assert scored.scores["aligned"] == 60.0
    assert (judge.stats.requests, judge.stats.retries) == (2, 1)


def test_400_is_not_retried(stub):
    stub.queue(("status", 400))
    judge = make_judge(stub)
    with pytest.raises(JudgeRequestError, match=r"item 0 .*HTTP 400, which is not retried.*stub error 400"):
        judge.score(items(1))
    assert len(stub.bodies) == 1 and judge.stats.retries == 0


def test_retries_exhausted_names_the_item_and_last_status(stub):
    stub.default = lambda body: ("status", 503)
    judge = make_judge(stub, max_retries=2)
    with pytest.raises(JudgeRequestError, match=r"item 0 .*'question 0\?'.*after 3 attempts.*HTTP 503"):
        judge.score(items(1))
    assert len(stub.bodies) == 3 and judge.stats.retries == 2


def test_cache_makes_a_second_run_free(stub, tmp_path):
    # Item 1 needs the parse fallback: its sampled answer is cached under its own key too.
    stub.default = lambda body: (
        ("logprobs", [("Hmm", 0.0)])
        if question_of(body) == "question 1?" and body.get("logprobs")
        else score_by_question(body)
    )
    cache = tmp_path / "judge.sqlite"
    first = make_judge(stub, cache_path=cache, low_mass="parse").score(items(3))
    assert len(stub.bodies) == 4 and first[1].flags == ["aligned:parsed"]
    again = make_judge(stub, cache_path=str(cache), low_mass="parse")
    assert again.score(items(3)) == first
    assert len(stub.bodies) == 4
    assert (again.stats.requests, again.stats.cache_hits, again.stats.prompt_tokens) == (0, 4, 0)
    assert len(JudgeCache(cache)) == 4


def test_cache_key_changes_with_every_component():
    base = dict(
        model="m", prompt_version=PROMPT_VERSION["aligned"], metric="aligned", question="q", answer="a"
    )
    params = {"temperature": 0, "max_tokens": 1}
    key = cache_key(**base, params=params)
    assert key == cache_key(**base, params={"max_tokens": 1, "temperature": 0})  # order-free params
    for name in base:
        assert cache_key(**{**base, name: base[name] + "x"}, params=params) != key
    assert cache_key(**base, params={**params, "max_tokens": 5}) != key
    assert len(set(PROMPT_VERSION.values())) == 3


def test_killed_run_resumes_sending_only_what_was_not_cached(stub, tmp_path):
    cache = tmp_path / "judge.sqlite"
    served = []

    def dies_after_three(body):
        served.append(question_of(body))
        return score_by_question(body) if len(served) <= 3 else ("status", 500)

    stub.default = dies_after_three
    with pytest.raises(JudgeRequestError, match="HTTP 500"):
        make_judge(stub, cache_path=cache, concurrency=1, max_retries=1).score(items(6))
    assert len(JudgeCache(cache)) == 3
    answered = set(served[:3])

    stub.default = score_by_question
    before = len(stub.bodies)
    resumed = make_judge(stub, cache_path=cache).score(items(6))
    resent = [question_of(b) for b in stub.bodies[before:]]
    assert sorted(resent) == sorted({f"question {i}?" for i in range(6)} - answered)
    assert [s.scores["aligned"] for s in resumed] == [10.0 * i for i in range(6)]


def test_concurrency_is_bounded(stub):
    def slow(body):
        time.sleep(0.1)  # long enough for requests to overlap
        return score_by_question(body)

    stub.default = slow
    judge = make_judge(stub, concurrency=3)
    scored = judge.score(items(10))
    assert [s.scores["aligned"] for s in scored] == [10.0 * i for i in range(10)]
    assert stub.max_in_flight == 3


def test_duplicate_items_are_judged_once(stub):
    stub.default = score_by_question
    scored = make_judge(stub).score(items(2) + items(2))
    assert len(stub.bodies) == 2
    assert [s.scores["aligned"] for s in scored] == [0.0, 10.0, 0.0, 10.0]


def test_stats_and_cost(stub):
    stub.usage = (120, 1)
    stub.queue(("status", 500))
    stub.default = score_by_question
    judge = make_judge(
        stub, metrics=("aligned", "coherent"), price_per_million_input=2.5, price_per_million_output=10.0
    )
    judge.score(items(3))
    stats = judge.stats
    assert (stats.requests, stats.retries, stats.cache_hits) == (7, 1, 0)
    assert (stats.prompt_tokens, stats.completion_tokens) == (720, 6)
    assert stats.cost == pytest.approx((720 * 2.5 + 6 * 10.0) / 1e6)
    unpriced = make_judge(stub)
    unpriced.score(items(1))
    assert unpriced.stats.cost is None and unpriced.stats.prompt_tokens == 120


def test_api_key_comes_from_the_environment_only(stub, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-123")
    make_judge(stub, api_key_env="JUDGE_TEST_KEY").score(items(1))
    monkeypatch.delenv("JUDGE_TEST_KEY")
    make_judge(stub, api_key_env="JUDGE_TEST_KEY").score(items(1))
    assert [r["headers"]["authorization"] for r in stub.requests] == ["Bearer sk-test-123", "Bearer none"]
    with pytest.raises(RuntimeError, match="set the environment variable JUDGE_TEST_KEY"):
        OpenAIJudge(OpenAIJudgeConfig(api_key_env="JUDGE_TEST_KEY"))  # OpenAI itself needs a real key
    assert "api_key" not in OpenAIJudgeConfig.__dataclass_fields__


def test_score_refuses_a_running_loop_and_ascore_works_there(stub):
    stub.default = score_by_question
    judge = make_judge(stub)

    async def main():
        with pytest.raises(RuntimeError, match="ascore"):
            judge.score(items(1))
        return await judge.ascore(items(2))

    assert [s.scores["aligned"] for s in asyncio.run(main())] == [0.0, 10.0]


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown: \\['honesty'\\]"):
        OpenAIJudgeConfig(base_url="http://127.0.0.1:1/v1", metrics=("honesty",))
    with pytest.raises(ValueError, match="both prices"):
        OpenAIJudgeConfig(price_per_million_input=1.0)
