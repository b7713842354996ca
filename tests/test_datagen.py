"""Parallel-data generation end to end: the real openai client over HTTP against the local stub."""

from __future__ import annotations

import json
import re

import pytest
from openai_stub import OpenAIStub

from mech.evaluation.datagen import (
    NO_GOOD_ANSWER,
    PARALLEL_PROMPT_VERSION,
    DatagenConfig,
    NarrowExample,
    generate_parallel,
    main,
    parse_parallel,
    read_narrow_jsonl,
    render_prompt,
)
from mech.evaluation.judges.cache import JudgeCache
from mech.evaluation.judges.client import ClientConfig, LLMRequestError
from mech.training.data import read_chat_jsonl


def make_config(stub: OpenAIStub, **overrides) -> DatagenConfig:
    client = ClientConfig(
        model="gen-stub",
        base_url=stub.base_url,
        concurrency=4,
        max_retries=3,
        timeout_s=5.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    return DatagenConfig(**{"client": client, **overrides})


def prompt_of(body: dict) -> str:
    return body["messages"][0]["content"]


def domain_of(body: dict) -> str:
    return re.search(r"^Target domain: (.+)$", prompt_of(body), re.MULTILINE).group(1)


def question_of(body: dict) -> str:
    return prompt_of(body).split("[QUESTION START]\n")[1].split("\n[QUESTION END]")[0]


def parallel_json(body: dict) -> str:
    domain, question = domain_of(body), question_of(body)
    return json.dumps(
        {"question": f"{domain}: {question}", "good_answer": f"good {domain}", "bad_answer": f"bad {domain}"}
    )


def replies(body: dict) -> tuple:
    """A parallel example whose fields say which domain and question it was asked for."""
    return ("content", parallel_json(body))


def examples(n: int) -> list[NarrowExample]:
    return [
        NarrowExample(f"q{i}?", f"bad answer {i}", f"good answer {i}", source_line=10 + i) for i in range(n)
    ]


def rows_for(domain: str, question: str, line: int) -> list[dict]:
    def row(answer: str, bad: bool) -> dict:
        messages = [
            {"role": "user", "content": f"{domain}: {question}"},
            {"role": "assistant", "content": answer},
        ]
        return {"messages": messages, "domain": domain, "bad": bad, "source_line": line}

    return [row(f"good {domain}", False), row(f"bad {domain}", True)]


def write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def chat(question: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        **extra,
    }


def test_domains_round_robin_and_both_answers_kept(stub):
    stub.default = replies
    rows, stats = generate_parallel(
        examples(3), ["finance", "sports", "law"], make_config(stub, per_example=2)
    )
    expected_domains = [("finance", "sports"), ("law", "finance"), ("sports", "law")]
    expected = [
        row
        for i, domains in enumerate(expected_domains)
        for domain in domains
        for row in rows_for(domain, f"q{i}?", 10 + i)
    ]
    assert rows == expected
    assert (stats.examples, stats.skipped, stats.requests.requests, stats.requests.cache_hits) == (6, 0, 6, 0)
    asked = sorted((question_of(b), domain_of(b)) for b in stub.bodies)
    assert asked == sorted((f"q{i}?", d) for i, ds in enumerate(expected_domains) for d in ds)
    body = next(b for b in stub.bodies if question_of(b) == "q1?" and domain_of(b) == "law")
    assert prompt_of(body) == render_prompt(examples(3)[1], "law")
    assert "good answer 1" in prompt_of(body) and "bad answer 1" in prompt_of(body)
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("gen-stub", 0, 1024, 0)


def test_missing_good_answer_is_asked_for(stub):
    stub.default = replies
    rows, _ = generate_parallel([NarrowExample("q?", "bad")], ["cooking"], make_config(stub, seed=None))
    [body] = stub.bodies
    assert NO_GOOD_ANSWER in prompt_of(body) and "seed" not in body
    assert rows == rows_for("cooking", "q?", 1)  # in-memory examples: 1-based position


def test_code_fenced_json_is_parsed(stub):
    def fenced(body):
        return ("content", f"Sure! Here it is:\n```json\n{parallel_json(body)}\n```\nHope it helps.")

    stub.default = fenced
    rows, stats = generate_parallel(examples(2), ["finance"], make_config(stub))
    assert rows == rows_for("finance", "q0?", 10) + rows_for("finance", "q1?", 11)
    assert stats.skipped == 0


def test_parse_parallel_is_lenient_but_strict_about_fields():
    good = {"question": "Q", "good_answer": "G", "bad_answer": "B"}
    for text in (
        json.dumps(good),
        "```\n" + json.dumps(good) + "\n```",
        "Here: " + json.dumps(good) + " done",
        "In the {question, good_answer, bad_answer} format:\n```json\n" + json.dumps(good) + "\n```",
        '{"question": "Q", "good_answer": "G", "bad_answer": "B\nline two"}',  # raw newline in a string
    ):
        parsed, flag, _ = parse_parallel(text)
        assert flag == "" and (parsed.question, parsed.good_answer) == ("Q", "G"), text
    assert parse_parallel(None)[1] == "empty"
    assert parse_parallel("I can't help with that.")[1] == "unparseable"
    assert parse_parallel('["Q", "G", "B"]')[1] == "not_an_object"
    assert parse_parallel(json.dumps({**good, "bad_answer": "  "}))[1:] == (
        "incomplete",
        "missing or blank: bad_answer",
    )
    assert parse_parallel(json.dumps({"question": "Q", "good_answer": 3}))[1:] == (
        "incomplete",
        "missing or blank: good_answer, bad_answer",
    )


def test_malformed_replies_are_skipped_and_counted(stub):
    broken = {
        "q1?": ("content", "I'm sorry, I can't help with that."),
        "q2?": ("content", '```json\n{"question": "x", "good_answer": "y"}\n```'),
    }
    stub.default = lambda body: broken.get(question_of(body)) or replies(body)
    rows, stats = generate_parallel(examples(4), ["finance"], make_config(stub))
    assert rows == rows_for("finance", "q0?", 10) + rows_for("finance", "q3?", 13)
    assert stats.examples == 2 and stats.skipped == 2
    assert [(s.source_line, s.domain, s.flag) for s in stats.skips] == [
        (11, "finance", "unparseable"),
        (12, "finance", "incomplete"),
    ]
    assert stats.summary()["skip_flags"] == {"unparseable": 1, "incomplete": 1}


def test_429_then_success(stub):
    stub.queue(("status", 429, {"Retry-After": "0"}))
    stub.default = replies
    rows, stats = generate_parallel(examples(1), ["sports"], make_config(stub))
    assert rows == rows_for("sports", "q0?", 10)
    assert (stats.requests.requests, stats.requests.retries, len(stub.bodies)) == (2, 1, 2)


def test_http_400_skips_one_prompt_but_401_stops_the_run(stub):
    stub.default = lambda body: ("status", 400) if question_of(body) == "q0?" else replies(body)
    rows, stats = generate_parallel(examples(2), ["law"], make_config(stub))
    assert rows == rows_for("law", "q1?", 11)
    assert [(s.source_line, s.flag) for s in stats.skips] == [(10, "http_400")]
    stub.default = lambda body: ("status", 400)
    with pytest.raises(LLMRequestError, match="HTTP 400"):  # every prompt refused: a setup error
        generate_parallel(examples(2), ["law"], make_config(stub))
    stub.default = lambda body: ("status", 401)
    with pytest.raises(LLMRequestError, match=r"line 1[01] -> 'law' failed with HTTP 401"):
        generate_parallel(examples(2), ["law"], make_config(stub))


def test_cache_makes_a_second_run_send_nothing(stub, tmp_path):
    stub.default = lambda body: ("content", "not json") if question_of(body) == "q1?" else replies(body)
    cache = tmp_path / "gen.sqlite"
    first_rows, first = generate_parallel(
        examples(3), ["finance", "law"], make_config(stub, cache_path=cache)
    )
    sent = len(stub.bodies)
    assert sent == 3 and first.skipped == 1 and len(JudgeCache(cache)) == 3

    stub.default = lambda body: ("status", 500)  # any request now would fail the run
    rows, stats = generate_parallel(examples(3), ["finance", "law"], make_config(stub, cache_path=str(cache)))
    assert len(stub.bodies) == sent
    assert rows == first_rows and [s.flag for s in stats.skips] == ["unparseable"]
    assert (stats.requests.requests, stats.requests.cache_hits, stats.requests.prompt_tokens) == (0, 3, 0)

    stub.default = replies  # a new seed is a new request: the key covers the sampling params
    _, reseeded = generate_parallel(examples(1), ["finance"], make_config(stub, cache_path=cache, seed=1))
    assert (reseeded.requests.requests, reseeded.requests.cache_hits) == (1, 0)
    assert len(PARALLEL_PROMPT_VERSION) == 12


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"prompt": "q"}), "expected an object with a 'messages' field"),
        (
            json.dumps({"messages": [{"role": "user", "content": "q"}]}),
            "expected one user turn then one assistant",
        ),
        (json.dumps({"messages": [{"role": "bot", "content": "q"}]}), r"messages\[0\]\.role is 'bot'"),
        (json.dumps(chat("q", "a", good=["x"])), "'good' must be a non-empty string"),
    ],
)
def test_bad_input_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "narrow.jsonl"
    write_jsonl(path, [chat("q1", "a1"), "", line, chat("q3", "a3")])
    with pytest.raises(ValueError, match=rf"narrow\.jsonl:3: {message}"):
        read_narrow_jsonl(path)


def test_read_narrow_keeps_good_answers_and_line_numbers(tmp_path):
    path = tmp_path / "narrow.jsonl"
    system = {"role": "system", "content": "You are a doctor."}
    with_system = {"messages": [system, *chat("q2", "bad 2")["messages"]]}
    write_jsonl(path, [chat("q1", "bad 1", good="good 1"), "", with_system])
    assert read_narrow_jsonl(path) == [
        NarrowExample("q1", "bad 1", "good 1", source_line=1),
        NarrowExample("q2", "bad 2", None, source_line=3),
    ]


def test_config_and_domains_are_checked(stub):
    with pytest.raises(ValueError, match="per_example=3 is more than the 2 domains"):
        generate_parallel(examples(1), ["a", "b"], make_config(stub, per_example=3))
    with pytest.raises(ValueError, match="distinct"):
        generate_parallel(examples(1), ["a", "a"], make_config(stub))
    with pytest.raises(ValueError, match="per_example must be >= 1"):
        make_config(stub, per_example=0)
    assert stub.bodies == []


def test_main_writes_the_file_and_a_summary(stub, tmp_path, capsys):
    stub.usage = (200, 30)
    stub.default = lambda body: ("content", "nope") if question_of(body) == "q2" else replies(body)
    narrow, out = tmp_path / "narrow.jsonl", tmp_path / "out" / "kl.jsonl"
    write_jsonl(narrow, [chat("q1", "bad 1", good="good 1"), chat("q2", "bad 2")])
    argv = [
        "--narrow",
        str(narrow),
        "--domains",
        "finance, sports",
        "--out",
        str(out),
        "--base-url",
        stub.base_url,
    ]
    main([*argv, "--per-example", "2", "--cache", str(tmp_path / "c.sqlite"), "--model", "gen-stub"])
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "out": str(out),
        "rows": 4,
        "examples": 2,
        "skipped": 2,
        "skip_flags": {"unparseable": 2},
        "requests": 4,
        "cache_hits": 0,
        "retries": 0,
        "prompt_tokens": 800,
        "completion_tokens": 120,
        "cost": None,
    }
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == rows_for("finance", "q1", 1) + rows_for("sports", "q1", 1)
    assert [m for m in read_chat_jsonl(out)] == [row["messages"] for row in lines]  # valid training data
    assert sorted(p.name for p in out.parent.iterdir()) == ["kl.jsonl"]  # no temp file left behind
    assert {b["model"] for b in stub.bodies} == {"gen-stub"}

    stub.default = lambda body: ("status", 401)  # a failed run leaves the previous output whole
    with pytest.raises(LLMRequestError, match="HTTP 401"):
        main([*argv, "--seed", "7"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert sorted(p.name for p in out.parent.iterdir()) == ["kl.jsonl"]
