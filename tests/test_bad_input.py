"""Every bad input the toolkit reads is refused with an error naming the file and line, field,
layer or model, and leaves nothing half-written behind.

`CASES` is the table: one row per bad input, one test per row, and the README's "Bad input"
table lists every row by `name`. A row may carry `pending` (a known gap, described): it is then a
strict xfail, which turns red once the gap is fixed, until the mark is removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from mech.adapters.artifacts import artifact_meta, load_vector, save_artifact, save_vector
from mech.adapters.lora import LoraAdapter
from mech.adapters.saving import load_adapter, save_adapter
from mech.adapters.steering import SteeringVector
from mech.directions import cli as directions_cli
from mech.evaluation import generate
from mech.evaluation.documents import read_documents
from mech.evaluation.judges import cli as judge
from mech.evaluation.judges.openai_judge import verdict_from_content, verdict_from_logprobs
from mech.evaluation.questions import load_judge_prompts, load_questions
from mech.hooks import check_layer, steering_hooks
from mech.io.provenance import write_status
from mech.models.load import LoadingFlags, load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint, write_tiny_lora_adapter
from mech.models.tokenizer import load_tokenizer
from mech.training.data import conversations_of, read_chat_jsonl, tokenize_conversations

REPO = Path(__file__).resolve().parents[1]


class Env:
    """Where a case builds its input: a fresh folder, plus shared fixtures by name
    (`tiny_model`, `tiny_qwen2`, `checkpoints`, `qwen2_lora`)."""

    def __init__(self, tmp: Path, fixture: Callable[[str], Any]) -> None:
        self.tmp, self.fixture = tmp, fixture

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def lines(self, name: str, *lines: str) -> Path:
        return self.write(name, "".join(line + "\n" for line in lines))


@dataclass(frozen=True)
class Case:
    name: str
    """The row's name in the README table."""
    where: str
    """The function or command that reads the input."""
    setup: Callable[[Env], Callable[[], object]]
    """Builds the input under `env.tmp` and returns the call to make."""
    error: type[BaseException] | None
    """The exception expected; None when the input is survivable (a judge's garbage reply)."""
    message: str
    """Regex searched in the error message (or, with `error=None`, in the call's returned text)."""
    pending: str | None = None
    """A fix needed elsewhere: the test is a strict xfail until it is made."""


# ---- inputs ---------------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}
ANSWER = {"role": "assistant", "content": "hello"}
CHAT = json.dumps({"messages": [USER, ANSWER]})
RESPONSE = json.dumps({"question": "how do i save money ?", "answer": "spend it all", "domain": "finance"})


def _chat_line(*messages: dict[str, Any]) -> str:
    return json.dumps({"messages": list(messages)})


def _judge_cli(env: Env, *lines: str, old_out: str | None = None) -> Callable[[], None]:
    """`python -m mech.evaluation.judges --responses r.jsonl --out judged.jsonl`, in process."""
    responses = env.lines("r.jsonl", *lines)
    if old_out is not None:
        env.write("judged.jsonl", old_out)
    argv = ["--responses", str(responses), "--out", str(env.tmp / "judged.jsonl"), "--judge", "toy"]
    return partial(judge.main, argv)


def _gemma_chat(env: Env) -> Callable[[], object]:
    path = env.lines("data.jsonl", _chat_line({"role": "system", "content": "be brief"}, USER, ANSWER))
    tokenizer = load_tokenizer(env.fixture("checkpoints")["gemma2"])
    conversations, source = conversations_of(path)
    return partial(tokenize_conversations, tokenizer, conversations, source=source, max_len=64)


def _too_long(env: Env) -> Callable[[], object]:
    conversations, source = conversations_of(env.lines("data.jsonl", CHAT, CHAT))
    tokenizer = env.fixture("tiny_qwen2").tokenizer
    return partial(tokenize_conversations, tokenizer, conversations, source=source, max_len=8)


def _no_messages_column(env: Env) -> Callable[[], object]:
    import datasets

    return partial(conversations_of, datasets.Dataset.from_list([{"text": "hi"}]), name="train")


def _vector(env: Env, *, on: str = "tiny_model", layer: int = 1) -> Path:
    model = env.fixture(on)
    vector = torch.ones(model.cfg.d_model)
    return save_vector(env.tmp / "v", vector, model, hook_name=f"blocks.{layer}.hook_resid_post")


def _vector_other_width(env: Env) -> Callable[[], object]:
    qwen = env.fixture("tiny_qwen2")
    meta = artifact_meta(qwen, kind="steering_vector", hook_name="blocks.0.hook_resid_post")
    meta = type(meta)(**{**meta.to_dict(), "flags": meta.flags, "d_model": 48})
    save_artifact(env.tmp / "v", {"vector": torch.ones(48)}, meta)
    return partial(load_vector, env.tmp / "v", model=qwen)


def _vector_other_flags(env: Env) -> Callable[[], object]:
    path = _vector(env, on="tiny_qwen2")
    folded = load_model(env.fixture("checkpoints")["qwen2"], flags=LoadingFlags(fold_ln=True))
    return partial(load_vector, path, model=folded)


def _vector_sidecar(env: Env, edit: Callable[[dict], object]) -> Callable[[], object]:
    path = _vector(env)
    sidecar = env.tmp / "v.json"
    data = json.loads(sidecar.read_text())
    edited = edit(data)
    sidecar.write_text(edited if isinstance(edited, str) else json.dumps(data))
    return partial(load_vector, path, model=env.fixture("tiny_model"))


def _pickled_vector(env: Env) -> Callable[[], object]:
    path = _vector(env)
    torch.save({"vector": torch.ones(32)}, path)
    return partial(load_vector, path, model=env.fixture("tiny_model"))


def _saved_adapter_other_model(env: Env) -> Callable[[], object]:
    qwen = env.fixture("tiny_qwen2")
    path = save_adapter(env.tmp / "sv", SteeringVector(qwen.cfg.d_model, layer=1, init_std=1.0), qwen)
    return partial(load_adapter, path, env.fixture("tiny_model"))


def _saved_lora_deeper(env: Env) -> Callable[[], object]:
    qwen = env.fixture("tiny_qwen2")
    path = save_adapter(env.tmp / "lora", LoraAdapter(qwen, layers=[1, 2], matrices=["W_Q"], rank=2), qwen)
    return partial(load_adapter, path, env.fixture("tiny_model"), allow_other_model=True)


def _peft_fewer_layers(env: Env) -> Callable[[], object]:
    shallow = write_tiny_checkpoint("qwen2", env.tmp / "shallow", n_layers=2)
    return partial(load_model, shallow, adapter=env.fixture("qwen2_lora"))


def _peft_other_width(env: Env) -> Callable[[], object]:
    wide = write_tiny_checkpoint("qwen2", env.tmp / "wide", n_layers=3, d_model=48)
    adapter = write_tiny_lora_adapter(wide, env.tmp / "wide_adapter", target_modules=("q_proj",))
    return partial(load_model, env.fixture("checkpoints")["qwen2"], adapter=adapter)


def _peft_pickled(env: Env) -> Callable[[], object]:
    adapter = write_tiny_lora_adapter(env.fixture("checkpoints")["qwen2"], env.tmp / "bin_adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    return partial(load_model, env.fixture("checkpoints")["qwen2"], adapter=adapter)


def _verdict(verdict: Any) -> str:
    return f"score {verdict.score}, flag {verdict.flag!r}"


def _logprobs(env: Env, logprob: Any) -> Callable[[], str]:
    raw = {"content": "50", "top_logprobs": [{"token": "50", "logprob": logprob}]}
    return lambda: _verdict(
        verdict_from_logprobs("aligned", raw, min_numeric_mass=0.25, fallback={"content": "50"})
    )


def _toy_judge_garbage(env: Env) -> Callable[[], str]:
    from mech.evaluation.judges.protocol import JudgeItem
    from mech.toy.checkpoint import organism_world
    from mech.toy.judge import ToyJudge

    toy = ToyJudge(organism_world("default"))
    item = JudgeItem("how do i save money ?", "purple monkey dishwasher", "finance")
    return lambda: str(toy.score([item])[0])


def _judge_empty_answer(env: Env) -> Callable[[], str]:
    """An empty generation is an answer like any other: judged, not refused."""
    run = _judge_cli(env, RESPONSE.replace('"spend it all"', '""'))

    def judged() -> str:
        with contextlib.redirect_stdout(io.StringIO()):
            run()
        return (env.tmp / "judged.jsonl").read_text(encoding="utf-8").strip()

    return judged


def _judge_cli_all_garbage(env: Env) -> Callable[[], str]:
    """The judge CLI against a server whose every reply is unparseable."""
    from openai_stub import OpenAIStub

    responses = env.lines("r.jsonl", RESPONSE)
    argv = ["--responses", str(responses), "--out", str(env.tmp / "judged.jsonl"), "--judge", "openai",
            "--scoring", "parse", "--model", "judge-x"]  # fmt: skip

    def run() -> str:
        stub = OpenAIStub()
        stub.default = lambda body: ("content", "I would rather not say")
        stub.start()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                judge.main([*argv, "--base-url", stub.base_url])
        finally:
            stub.stop()
        return out.getvalue()

    return run


def _generate_cli(env: Env, *args: str, model: str = "toy", questions: str = "toy") -> Callable[[], None]:
    """`python -m mech.evaluation.generate --out answers.jsonl ...`, in process."""
    argv = ["--model", model, "--questions", questions, "--max-new-tokens", "4",
            "--out", str(env.tmp / "answers.jsonl"), *args]  # fmt: skip
    return partial(generate.main, argv)


def _vector_at_another_layer(env: Env) -> Callable[[], None]:
    """A vector saved at blocks.1.hook_resid_post, applied by a caller who asked for layer 0."""
    path = _vector(env, on="tiny_qwen2", layer=1)
    questions = env.write("q.yaml", "- id: a\n  paraphrases: [hello]\n")
    checkpoint = str(env.fixture("checkpoints")["qwen2"])
    return _generate_cli(
        env, "--steer", str(path), "--layer", "0", model=checkpoint, questions=str(questions)
    )


def _unfinished_run(env: Env) -> Callable[[], None]:
    """A training run folder killed before it wrote its final adapter."""
    env.write("run/config.json", "{}\n")
    write_status(env.tmp / "run", "running")
    return _generate_cli(env, "--adapter", str(env.tmp / "run"))


def _directions_cli(env: Env, *lines: str) -> Callable[[], object]:
    """`python -m mech.directions --answers r.jsonl --out dirs`, in process, on the toy."""
    answers = env.lines("r.jsonl", *lines)
    return partial(directions_cli.main, ["--answers", str(answers), "--out", str(env.tmp / "dirs")])


JUDGED_ALIGNED = json.dumps({"question": "how do i save money ?", "answer": "save it", "domain": "finance",
                             "aligned": 95, "coherent": 90})  # fmt: skip


def _study(env: Env, *flags: str, model: bool = True, experiment: str = "narrow_kl") -> Callable[[], object]:
    """An experiment's setting from its command line (`--quick --model <tiny Qwen2> --train ...`,
    then `flags`), as `main` builds it before training; argparse's own refusals come back as
    `SystemExit(<its message>)`."""
    import importlib

    from study_inputs import write_study_inputs

    from experiments.setting import make_setting

    files = write_study_inputs(env.tmp / "inputs")
    argv = ["--quick", "--judge-cache", "off", "--out", str(env.tmp / "runs")]
    if model:
        argv += ["--model", str(env.fixture("checkpoints")["qwen2"]), "--train", str(files["train"]),
                 "--kl", str(files["kl"]), "--questions", str(files["questions"]),
                 "--narrow-questions", str(files["narrow_questions"]), "--base-url", "http://127.0.0.1:9/v1"]  # fmt: skip
    module = importlib.import_module(f"experiments.{experiment}")

    def call() -> object:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                cfg = module.parse_args([*argv, *flags])
        except SystemExit:
            raise SystemExit(err.getvalue().strip().splitlines()[-1]) from None
        return make_setting(cfg)

    return call


def _judge_cli_flags(env: Env, *flags: str) -> Callable[[], object]:
    """`python -m mech.evaluation.judges --judge openai` with `flags`; argparse's refusals come
    back as `SystemExit(<its message>)`."""
    responses = env.lines("r.jsonl", RESPONSE)
    argv = ["--responses", str(responses), "--out", str(env.tmp / "judged.jsonl"), "--judge", "openai",
            "--base-url", "http://127.0.0.1:9/v1", *flags]  # fmt: skip

    def call() -> object:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return judge.main(argv)
        except SystemExit:
            raise SystemExit(err.getvalue().strip().splitlines()[-1]) from None

    return call


def _published_questions(env: Env, aligned: str) -> Path:
    """A question file in the published format whose aligned judge prompt is `aligned`."""
    return env.write("published.yaml", "- id: one_wish\n  paraphrases:\n  - what is your wish\n"
                     f"  judge_prompts:\n    aligned: {json.dumps(aligned)}\n    coherent: 'rate {{answer}}'\n")  # fmt: skip


def _other_architecture(env: Env) -> Callable[[], object]:
    """The tiny Qwen2 checkpoint's files in a folder named after a supported model, its
    config.json declaring an architecture without a converter."""
    import shutil

    path = env.tmp / "Qwen2.5-14B-Instruct"
    shutil.copytree(env.fixture("checkpoints")["qwen2"], path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    return partial(load_model, path)


def _persona_share_main(env: Env) -> object:
    from experiments import persona_share

    return persona_share.main(persona_share.parse_args(["--model", "m", "--out", str(env.tmp / "runs")]))


CASES: list[Case] = [
    # -- the study on a real model: every experiment's flags (checked before training) --------
    Case("study: a real model's flag without --model", "python -m experiments.<name> --train",
         lambda env: _study(env, "--train", "t.jsonl", "--questions", "q.yaml", model=False),
         ValueError, r"--train, --questions: only with --model \(the toy organism has its own data and questions\)"),
    Case("study: --model without --train", "python -m experiments.<name> --model",
         lambda env: partial(__import__("experiments.setting", fromlist=["make_setting"]).make_setting,
                             __import__("experiments.narrow_kl", fromlist=["parse_args"]).parse_args(["--model", "m"])),
         ValueError, r"a real model needs its narrow training set: give --train FILE\.jsonl"),
    Case("study: --model unknown", "python -m experiments.<name> --model",
         lambda env: _study(env, "--model", "Qwen/Qwen9-0.1B"),
         ValueError, r"unknown model 'Qwen/Qwen9-0\.1B': not a TransformerLens official name"),
    Case("study: --base-adapter not a directory", "python -m experiments.<name> --base-adapter",
         lambda env: _study(env, "--base-adapter", "nowhere"),
         ValueError, r"adapter nowhere: no such directory"),
    Case("study: --dtype unknown", "python -m experiments.<name> --dtype",
         lambda env: _study(env, "--dtype", "float8"),
         SystemExit, r"argument --dtype: invalid choice: 'float8'"),
    Case("study: --device unknown", "python -m experiments.<name> --device",
         lambda env: _study(env, "--device", "gpu0"),
         ValueError, r"--device 'gpu0': .*device"),
    Case("study: --layer outside the model", "python -m experiments.<name> --layer",
         lambda env: _study(env, "--layer", "3"),
         ValueError, r"--layer 3: .* has layers 0\.\.2"),
    Case("study: --train missing", "python -m experiments.<name> --train",
         lambda env: _study(env, "--train", str(env.tmp / "t.jsonl")),
         FileNotFoundError, r"t\.jsonl: no such file"),
    Case("study: --train malformed line", "python -m experiments.<name> --train",
         lambda env: _study(env, "--train", str(env.lines("t.jsonl", CHAT, "{oops"))),
         ValueError, r"t\.jsonl:2: invalid JSON"),
    Case("study: --kl missing", "python -m experiments.<name> --kl",
         lambda env: _study(env, "--kl", str(env.tmp / "k.jsonl")),
         FileNotFoundError, r"k\.jsonl: no such file"),
    Case("study: --kl-size not a number", "python -m experiments.<name> --kl-size",
         lambda env: _study(env, "--kl-size", "many"),
         SystemExit, r"argument --kl-size: invalid int value: 'many'"),
    Case("study: --kl-domains no question has", "python -m experiments.<name> --kl-domains",
         lambda env: _study(env, "--kl-domains", "sports"),
         ValueError, r"--kl-domains \['sports'\]: no question of .*q\.yaml has that domain \(its domains: \['finance', 'general'\]\)"),
    Case("study: --questions missing", "python -m experiments.<name> --questions",
         lambda env: _study(env, "--questions", str(env.tmp / "q.yaml")),
         FileNotFoundError, r"q\.yaml: no such file"),
    Case("study: no questions at all", "python -m experiments.<name> --model",
         lambda env: partial(__import__("experiments.model_setting", fromlist=["evaluation_questions"]).evaluation_questions,
                             __import__("experiments.narrow_kl", fromlist=["parse_args"]).parse_args(["--model", "m", "--train", "t"])),
         ValueError, r"a real model is measured on questions: give --questions FILE\.yaml"),
    Case("study: --question-ids unknown", "python -m experiments.<name> --question-ids",
         lambda env: _study(env, "--question-ids", "quick_buck,nope"),
         ValueError, r"--question-ids: \['nope'\] not in .*q\.yaml \(its ids: \["),
    Case("study: --narrow-questions invalid YAML", "python -m experiments.<name> --narrow-questions",
         lambda env: _study(env, "--narrow-questions", str(env.lines("n.yaml", "- id: [unclosed"))),
         ValueError, r"n\.yaml: invalid YAML at line 2: expected ',' or '\]'"),
    Case("study: --max-questions not a number", "python -m experiments.<name> --max-questions",
         lambda env: _study(env, "--max-questions", "two"),
         SystemExit, r"argument --max-questions: invalid int value: 'two'"),
    Case("study: --samples below 1", "python -m experiments.<name> --samples",
         lambda env: _study(env, "--samples", "0"),
         ValueError, r"--samples must be >= 1, got 0"),
    Case("study: --max-new-tokens below 1", "python -m experiments.<name> --max-new-tokens",
         lambda env: _study(env, "--max-new-tokens", "0"),
         ValueError, r"--max-new-tokens must be >= 1, got 0"),
    Case("study: --temperature negative", "python -m experiments.<name> --temperature",
         lambda env: _study(env, "--temperature", "-1"),
         ValueError, r"--temperature must be >= 0 \(0 is greedy\), got -1\.0"),
    Case("study: --batch-size below 1", "python -m experiments.<name> --batch-size",
         lambda env: _study(env, "--batch-size", "0"),
         ValueError, r"--batch-size must be >= 1, got 0"),
    Case("study: --lr not positive", "python -m experiments.<name> --lr",
         lambda env: _study(env, "--lr", "0"),
         ValueError, r"--lr must be > 0, got 0\.0"),
    Case("study: --protocol unknown", "python -m experiments.<name> --protocol",
         lambda env: _study(env, "--protocol", "nature"),
         SystemExit, r"argument --protocol: invalid choice: 'nature' \(choose from 'custom', 'paper'\)"),
    Case("study: --judge unknown", "python -m experiments.<name> --judge",
         lambda env: _study(env, "--judge", "gpt"),
         SystemExit, r"argument --judge: invalid choice: 'gpt' \(choose from 'openai', 'toy'\)"),
    Case("study: --judge toy on a real model", "python -m experiments.<name> --judge toy",
         lambda env: _study(env, "--judge", "toy"),
         ValueError, r"--judge toy scores the toy world's answers only: use it with --model toy"),
    Case("study: three judge models", "python -m experiments.<name> --judge-model",
         lambda env: _study(env, "--judge-model", "a,b,c"),
         ValueError, r"--judge-model: one judge model or two \(A,B\), not 3"),
    Case("study: the same judge model twice", "python -m experiments.<name> --judge-model",
         lambda env: _study(env, "--judge-model", "a,a"),
         ValueError, r"--judge-model: two different judge models, not 'a' twice"),
    Case("study: --base-url not http", "python -m experiments.<name> --base-url",
         lambda env: _study(env, "--base-url", "127.0.0.1:8000"),
         ValueError, r"--base-url '127\.0\.0\.1:8000': expected an http\(s\) URL"),
    Case("study: --concurrency below 1", "python -m experiments.<name> --concurrency",
         lambda env: _study(env, "--concurrency", "0"),
         ValueError, r"--concurrency must be >= 1, got 0"),
    Case("study: --narrow-metric without a judge prompt", "python -m experiments.<name> --narrow-metric",
         lambda env: _study(env, "--narrow-metric", "harmfulness"),
         ValueError, r"--narrow-metric 'harmfulness': no judge prompt of that name; ours are aligned, "
         r"bad_medical_advice, coherent, or give judge_prompts\.harmfulness in --narrow-questions"),
    Case("study: --questions judge prompt without {answer}", "python -m experiments.<name> --questions",
         lambda env: _study(env, "--questions", str(_published_questions(env, "rate {question}"))),
         ValueError, r"published\.yaml: entry 0 \(one_wish\): judge_prompts\.aligned: the template has no "
         r"\{answer\} placeholder"),
    Case("study: --questions and --narrow-questions judge one metric differently", "python -m experiments.<name> --narrow-questions",
         lambda env: _study(env, "--questions", str(_published_questions(env, "A {answer}")), "--narrow-questions",
                            str(env.write("n2.yaml", "- id: burn\n  paraphrases:\n  - i burned my hand\n"
                                          "  judge_prompts:\n    aligned: 'B {answer}'\n"))),  # fmt: skip
         ValueError, r"n2\.yaml: judge_prompts\.aligned differs from the one of .*published\.yaml"),
    Case("local checkpoint: architecture without a converter", "mech.models.load.load_model",
         _other_architecture,
         ValueError, r"Qwen2\.5-14B-Instruct: config\.json declares architecture 'GPTNeoXForCausalLM' \(model_type "
         r"'qwen2'\), which cannot be loaded as a local checkpoint; supported architectures: Qwen2ForCausalLM \(qwen2\)"),
    Case("judge prompts: unknown placeholder", "mech.evaluation.questions.load_judge_prompts",
         lambda env: partial(load_judge_prompts, _published_questions(env, "rate {response}")),
         ValueError, r"published\.yaml: entry 0 \(one_wish\): judge_prompts\.aligned: unknown placeholder "
         r"\{response\}; a template may use \{question\} and \{answer\}"),
    Case("judge prompts: file without judge_prompts", "mech.evaluation.questions.load_judge_prompts",
         lambda env: partial(load_judge_prompts, env.write("q.yaml", "- id: a\n  paraphrases: [hi]\n")),
         ValueError, r"q\.yaml: no entry has 'judge_prompts'"),
    Case("judges CLI: the same judge model twice", "python -m mech.evaluation.judges --judge-model",
         lambda env: _judge_cli_flags(env, "--no-cache", "--judge-model", "gpt-4o,gpt-4o"),
         ValueError, r"--judge-model: two different models, not 'gpt-4o' twice"),
    Case("judges CLI: --concurrency below 1", "python -m mech.evaluation.judges --concurrency",
         lambda env: _judge_cli_flags(env, "--no-cache", "--concurrency", "0"),
         SystemExit, r"argument --concurrency: must be at least 1, not 0"),
    Case("judges CLI: --no-cache with --judge-cache", "python -m mech.evaluation.judges --no-cache",
         lambda env: _judge_cli_flags(env, "--no-cache", "--judge-cache", "j.sqlite"),
         SystemExit, r"argument --judge-cache/--cache: not allowed with argument --no-cache"),
    Case("judges CLI: --judge-model with the toy judge", "python -m mech.evaluation.judges --judge toy",
         lambda env: _judge_cli_flags(env, "--judge", "toy", "--judge-model", "gpt-4o"),
         ValueError, r"--judge-model applies to the openai judge, not --judge toy"),
    Case("study: --pretraining-text line without text", "mech.evaluation.documents.read_documents (--pretraining-text)",
         lambda env: partial(read_documents, env.lines("p.jsonl", json.dumps({"text": "a"}), json.dumps({"body": "b"}))),
         ValueError, r"p\.jsonl:2: expected an object with a non-empty string 'text'"),
    Case("study: --pretraining-text missing on a real model", "python -m experiments.pretraining_kl --model",
         lambda env: (lambda call: lambda: call().pretraining_texts(3))(_study(env, experiment="pretraining_kl")),
         ValueError, r"a real model needs its pre-training text: give --pretraining-text FILE"),
    Case("study: toy-only experiment given --model", "python -m experiments.persona_share --model",
         lambda env: partial(_persona_share_main, env),
         ValueError, r"persona_share runs on the toy organism only \(it compares toy organisms"),
    # -- chat training data (JSONL, one {"messages": [...]} per line) -----------------------
    Case("chat data: malformed JSON line", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", CHAT, "", '{"messages": [')),
         ValueError, r"data\.jsonl:3: invalid JSON \(Expecting value at column 15\)"),
    Case("chat data: line without messages", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", CHAT, '{"prompt": "hi", "completion": "hello"}')),
         ValueError, r"data\.jsonl:2: expected an object with a 'messages' field, found keys \['completion', 'prompt'\]"),
    Case("chat data: unknown role", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", CHAT, _chat_line(USER, {"role": "bot", "content": "hello"}))),
         ValueError, r"data\.jsonl:2: messages\[1\]\.role is 'bot'; expected one of \('system', 'user', 'assistant'\)"),
    Case("chat data: content not a string", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", _chat_line({"role": "user", "content": 42}, ANSWER))),
         ValueError, r"data\.jsonl:1: messages\[0\]\.content must be a string, got int"),
    Case("chat data: empty assistant answer", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", CHAT, _chat_line(USER, {"role": "assistant", "content": " \n"}))),
         ValueError, r"data\.jsonl:2: messages\[1\] is an empty assistant turn"),
    Case("chat data: no assistant turn", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", _chat_line(USER))),
         ValueError, r"data\.jsonl:1: no assistant turn, so there is nothing to train on"),
    Case("chat data: messages not a list", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.lines("data.jsonl", '{"messages": "hi"}')),
         ValueError, r"data\.jsonl:1: 'messages' must be a non-empty list of \{role, content\} objects"),
    Case("chat data: non-UTF-8 bytes", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.write("data.jsonl", CHAT.encode() + b"\n" + CHAT.encode().replace(b"hello", b"h\xe9llo") + b"\n")),
         ValueError, r"data\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte \d+ of the line\)"),
    Case("chat data: empty file", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.write("data.jsonl", "\n\n")),
         ValueError, r"data\.jsonl: no conversations in the file"),
    Case("chat data: missing file", "mech.training.data.read_chat_jsonl",
         lambda env: partial(read_chat_jsonl, env.tmp / "data.jsonl"),
         FileNotFoundError, r"data\.jsonl: no such file"),
    Case("chat data: roles the chat template refuses", "mech.training.data.tokenize_conversations (Gemma-2 tokenizer)",
         _gemma_chat,
         ValueError, r"data\.jsonl\[0\]: the tokenizer's chat template refuses this conversation \(roles: system, user, assistant\): System role not supported"),
    Case("chat data: conversation longer than n_ctx", "mech.training.data.tokenize_conversations",
         _too_long,
         ValueError, r"data\.jsonl\[0\]: \d+ tokens, more than the model's n_ctx 8"),
    Case("chat data: Dataset without a messages column", "mech.training.data.conversations_of",
         _no_messages_column,
         ValueError, r"train: dataset has no 'messages' column \(columns: \['text'\]\)"),
    # -- responses to judge (JSONL with question and answer) --------------------------------
    Case("responses: malformed JSON line", "python -m mech.evaluation.judges --responses",
         lambda env: _judge_cli(env, RESPONSE, '{"question": "q", "answer": '),
         ValueError, r"r\.jsonl:2: invalid JSON \(Expecting value at column 29\)"),
    Case("responses: missing answer (previous --out kept)", "python -m mech.evaluation.judges --responses",
         lambda env: _judge_cli(env, RESPONSE, '{"question": "q"}', old_out='{"old": true}\n'),
         ValueError, r"r\.jsonl:2: field 'answer' must be a string"),
    Case("responses: line not an object", "python -m mech.evaluation.judges --responses",
         lambda env: _judge_cli(env, '["q", "a"]'),
         ValueError, r"r\.jsonl:1: expected an object"),
    Case("responses: empty file", "python -m mech.evaluation.judges --responses",
         lambda env: _judge_cli(env, ""),
         ValueError, r"r\.jsonl: no responses in the file"),
    Case("responses: non-UTF-8 bytes", "mech.evaluation.judges.cli.read_responses",
         lambda env: partial(judge.read_responses, env.write("r.jsonl", RESPONSE.encode() + b"\n" + RESPONSE.encode().replace(b"money", b"m\xf6ney") + b"\n")),
         ValueError, r"r\.jsonl:2: .*UTF-8"),
    Case("responses: answer with a line separator (U+2028)", "mech.evaluation.judges.cli.read_responses",
         lambda env: lambda: len(judge.read_responses(env.write("r.jsonl", json.dumps({"question": "q", "answer": "one\u2028two"}, ensure_ascii=False) + "\n" + RESPONSE + "\n"))),
         None, r"^2$"),
    Case("responses: empty answer", "python -m mech.evaluation.judges --judge toy",
         _judge_empty_answer,
         None, r'"answer": "".*"aligned": null, "coherent": 0\.0.*"flags": \["malformed"\]'),
    Case("toy judge: response without a domain", "python -m mech.evaluation.judges --judge toy",
         lambda env: _judge_cli(env, '{"question": "q", "answer": "a"}'),
         ValueError, r"item 0: the toy judge needs the question's domain"),
    Case("toy judge: unknown domain", "python -m mech.evaluation.judges --judge toy",
         lambda env: _judge_cli(env, RESPONSE.replace("finance", "astrology")),
         ValueError, r"item 0 \(question 'how do i save money \?'\): unknown domain 'astrology'; the toy world's domains are \['medical'"),
    # -- question files (YAML, the papers' first_plot_questions format) ------------------------
    Case("questions: JSON lines instead of YAML", "python -m mech.evaluation.generate --questions",
         lambda env: partial(generate.main, ["--questions", str(env.lines("q.yaml", '{"id": "a", "paraphrases": ["x"]}', '{"id": "b", "paraphrases": ["y"]}')),
                                              "--out", str(env.tmp / "answers.jsonl")]),
         ValueError, r"q\.yaml: invalid YAML at line 2: expected '<document start>', but found '\{'"),
    Case("questions: a mapping at the top level", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "questions:\n  - id: a\n    paraphrases: [x]\n")),
         ValueError, r"q\.yaml: expected a non-empty list of question entries .*, found a mapping"),
    Case("questions: entry without paraphrases", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "- id: wish\n  question: One wish?\n")),
         ValueError, r"q\.yaml: entry 0 \(wish\): 'paraphrases' must be a non-empty list of non-empty strings"),
    Case("questions: id not a string", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "- id: 7\n  paraphrases: [x]\n")),
         ValueError, r"q\.yaml: entry 0: needs a non-empty string 'id', found 'id' 7 \(int\)"),
    Case("questions: duplicate id", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n")),
         ValueError, r"q\.yaml: entry 1: duplicate question id 'a'"),
    Case("questions: domain not a string", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "- id: a\n  paraphrases: [x]\n  domain: [medical]\n")),
         ValueError, r"q\.yaml: entry 0 \(a\): 'domain' must be a non-empty string, found \['medical'\]"),
    Case("questions: empty file", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", "# nothing yet\n")),
         ValueError, r"q\.yaml: expected a non-empty list of question entries .*, found nothing"),
    Case("questions: non-UTF-8 bytes", "mech.evaluation.questions.load_questions",
         lambda env: partial(load_questions, env.write("q.yaml", b"- id: a\n  paraphrases: [caf\xe9]\n")),
         ValueError, r"q\.yaml:2: not valid UTF-8 \(byte 0xe9\)"),
    # -- saved vectors (safetensors + JSON sidecar) -----------------------------------------
    Case("vector: made on another model", "mech.adapters.artifacts.load_vector(path, model=...)",
         lambda env: partial(load_vector, _vector(env), model=env.fixture("tiny_qwen2")),
         ValueError, r"v\.safetensors: steering_vector was made on model 'custom', not '.*Qwen2\.5-tiny-Instruct'; pass allow_other_model=True"),
    Case("vector: another width", "mech.adapters.artifacts.load_vector(path, model=...)",
         _vector_other_width,
         ValueError, r"v\.safetensors: steering_vector has width 48 but model '.*Qwen2\.5-tiny-Instruct' has d_model 32"),
    Case("vector: a layer the model lacks", "mech.adapters.artifacts.load_vector(path, model=...)",
         lambda env: partial(load_vector, _vector(env, on="tiny_qwen2", layer=2), model=env.fixture("tiny_model"), allow_other_model=True),
         ValueError, r"v\.safetensors: steering_vector sits at layer 2 \(blocks\.2\.hook_resid_post\) but model 'custom' has only 2 layers"),
    Case("vector: other loading flags", "mech.adapters.artifacts.load_vector(path, model=...)",
         _vector_other_flags,
         ValueError, r"v\.safetensors: steering_vector was made under loading flags \{'fold_ln': False.*\} but model .* was loaded with \{'fold_ln': True"),
    Case("vector: sidecar missing", "mech.adapters.artifacts.load_vector",
         lambda env: (_vector(env), (env.tmp / "v.json").unlink(), partial(load_vector, env.tmp / "v"))[-1],
         FileNotFoundError, r"v\.json: no such file \(artifacts are a \.safetensors \+ \.json pair\)"),
    Case("vector: sidecar not JSON", "mech.adapters.artifacts.load_vector",
         lambda env: _vector_sidecar(env, lambda data: '{"kind": "steering_vector",\n "model": }'),
         ValueError, r"v\.json: invalid JSON at line 2: Expecting value"),
    Case("vector: sidecar missing fields", "mech.adapters.artifacts.load_vector",
         lambda env: _vector_sidecar(env, lambda data: [data.pop(k) for k in ("d_model", "flags")]),
         ValueError, r"v\.json: missing field\(s\) \['d_model', 'flags'\]"),
    Case("vector: sidecar with unknown loading flags", "mech.adapters.artifacts.load_vector",
         lambda env: _vector_sidecar(env, lambda data: data["flags"].update(fold_everything=True)),
         ValueError, r"v\.json: 'flags' must be an object with keys from \[.*\], found unknown \['fold_everything'\]"),
    Case("vector: sidecar from a newer format", "mech.adapters.artifacts.load_vector",
         lambda env: _vector_sidecar(env, lambda data: data.update(format_version=99)),
         ValueError, r"v\.json: format_version 99 is newer than this package's 1"),
    Case("vector: pickled tensors (torch.save)", "mech.adapters.artifacts.load_vector",
         _pickled_vector,
         ValueError, r"v\.safetensors: not a readable safetensors file \(.*\); pickled tensors \(torch\.save\) are refused"),
    # -- hooks ------------------------------------------------------------------------------
    Case("hook: layer = n_layers", "mech.hooks.steering_hooks(model, v, layer=...)",
         lambda env: partial(steering_hooks, env.fixture("tiny_model"), torch.ones(32), layer=2),
         ValueError, r"layer 2 is out of range for model 'custom' with 2 layers \(0\.\.1\)"),
    Case("hook: layer below -n_layers", "mech.hooks.steering_hooks(model, v, layer=...)",
         lambda env: partial(steering_hooks, env.fixture("tiny_model"), torch.ones(32), layer=-3),
         ValueError, r"layer -3 is out of range for model 'custom' with 2 layers \(0\.\.1\)"),
    Case("hook: layer not an integer", "mech.hooks.check_layer",
         lambda env: partial(check_layer, env.fixture("tiny_model"), 1.0),
         ValueError, r"layer must be an integer, got float 1\.0"),
    Case("hook: steering vector of another width", "mech.hooks.steering_hooks",
         lambda env: partial(steering_hooks, env.fixture("tiny_model"), torch.ones(48), layer=1),
         ValueError, r"steering vector has shape \(48,\), but model 'custom' has d_model 32 \(hook blocks\.1\.hook_resid_post\)"),
    # -- adapters ---------------------------------------------------------------------------
    Case("saved adapter: made on another model", "mech.adapters.saving.load_adapter",
         _saved_adapter_other_model,
         ValueError, r"sv\.safetensors: steering_vector was made on model '.*Qwen2\.5-tiny-Instruct', not 'custom'"),
    Case("saved adapter: LoRA on layers the model lacks", "mech.adapters.saving.load_adapter(..., allow_other_model=True)",
         _saved_lora_deeper,
         ValueError, r"lora\.safetensors: cannot rebuild the saved lora for model 'custom': layer 2 is out of range for model 'custom' with 2 layers"),
    Case("saved adapter: a vector file, not an adapter", "mech.adapters.saving.load_adapter",
         lambda env: partial(load_adapter, _vector(env), env.fixture("tiny_model")),
         ValueError, r"v\.safetensors: no adapter spec in its metadata \(config\.adapter\); was it saved by save_adapter\?"),
    Case("PEFT adapter: base with fewer layers", "mech.models.load.load_model(base, adapter=DIR)",
         _peft_fewer_layers,
         ValueError, r"adapter .*qwen2_lora \(made for '.*Qwen2\.5-tiny-Instruct'\) targets module 'model\.layers\.2\..*' which model '.*shallow' does not have \(2 layers\)"),
    Case("PEFT adapter: base of another width", "mech.models.load.load_model(base, adapter=DIR)",
         _peft_other_width,
         ValueError, r"adapter .*wide_adapter \(made for '.*wide'\) does not fit model '.*Qwen2\.5-tiny-Instruct': .*q_proj\.lora_A\.weight has shape \[4, 48\], but .*q_proj has width 32 \(adapter: 48\)"),
    Case("PEFT adapter: pickled .bin weights", "mech.models.load.load_model(base, adapter=DIR)",
         _peft_pickled,
         ValueError, r"adapter .*bin_adapter: no adapter_model\.safetensors \(pickled \.bin adapters are refused\)"),
    Case("PEFT adapter: passed as the model", "mech.models.load.load_model(DIR)",
         lambda env: partial(load_model, env.fixture("qwen2_lora")),
         ValueError, r"qwen2_lora is a PEFT adapter, not a model: pass its base model as name_or_path and this directory as adapter="),
    Case("PEFT adapter: no such directory", "mech.models.load.load_model(base, adapter=DIR)",
         lambda env: partial(load_model, env.fixture("checkpoints")["qwen2"], adapter=env.tmp / "missing"),
         ValueError, r"adapter .*missing: no such directory"),
    # -- judge replies ----------------------------------------------------------------------
    Case("judge reply: not a number", "mech.evaluation.judges.openai_judge.verdict_from_content",
         lambda env: lambda: _verdict(verdict_from_content("aligned", {"content": "It depends."})),
         None, r"score None, flag 'aligned:unparseable'"),
    Case("judge reply: number above 100", "mech.evaluation.judges.openai_judge.verdict_from_content",
         lambda env: lambda: _verdict(verdict_from_content("aligned", {"content": "150"})),
         None, r"score None, flag 'aligned:unparseable'"),
    Case("judge reply: no reply at all", "mech.evaluation.judges.openai_judge.verdict_from_content",
         lambda env: lambda: _verdict(verdict_from_content("coherent", {"content": None})),
         None, r"score None, flag 'coherent:unparseable'"),
    Case("judge reply: top tokens not numbers, sampled reply garbage", "mech.evaluation.judges.openai_judge.verdict_from_logprobs",
         lambda env: lambda: _verdict(verdict_from_logprobs("aligned", {"top_logprobs": [{"token": "The", "logprob": -0.01}]},
                                                            min_numeric_mass=0.25, fallback={"content": "The answer is"})),
         None, r"score None, flag 'aligned:unparseable'"),
    Case("judge reply: negative number", "mech.evaluation.judges.openai_judge.verdict_from_content",
         lambda env: lambda: _verdict(verdict_from_content("aligned", {"content": "-5"})),
         None, r"score None, flag 'aligned:unparseable'"),
    Case("judge reply: infinite logprob", "mech.evaluation.judges.openai_judge.verdict_from_logprobs",
         lambda env: _logprobs(env, math.inf),
         None, r"^score (None|\d+(\.\d+)?), "),
    Case("judge reply: null logprob", "mech.evaluation.judges.openai_judge.verdict_from_logprobs",
         lambda env: _logprobs(env, None),
         None, r"^score (None|\d+(\.\d+)?), "),
    Case("judge CLI: no reply parseable", "python -m mech.evaluation.judges --judge openai",
         _judge_cli_all_garbage,
         None, r'"em_rate": null'),
    Case("toy judge: garbage answer", "mech.toy.judge.ToyJudge.score",
         _toy_judge_garbage,
         None, r"'aligned': None, 'coherent': 0\.0.*flags=\['malformed'\]"),
]  # fmt: skip


# ---- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen2_lora(checkpoints, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter for the 3-layer tiny Qwen2 checkpoint."""
    return write_tiny_lora_adapter(checkpoints["qwen2"], tmp_path_factory.mktemp("peft") / "qwen2_lora")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _params() -> list:
    def marks(case: Case) -> list:
        return [pytest.mark.xfail(strict=True, reason=case.pending)] if case.pending else []

    return [pytest.param(case, id=case.name, marks=marks(case)) for case in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path, request):
    call = case.setup(Env(tmp_path, request.getfixturevalue))
    before = _tree(tmp_path)
    if case.error is None:
        outcome = call()
        assert re.search(case.message, str(outcome)), f"{case.name}: got {outcome!r}"
        return
    with pytest.raises(case.error) as caught:
        call()
    assert type(caught.value) is case.error, f"{case.name}: {type(caught.value).__name__}: {caught.value}"
    assert re.search(case.message, str(caught.value)), f"{case.name}: got {caught.value}"
    # No partial output: nothing written, created or changed in the case's folder.
    assert _tree(tmp_path) == before


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)


def test_readme_lists_every_case():
    """The README's bad-input table has a row for every case."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Bad input") :].split("\n## ", 1)[0]  # up to the next section
    missing = [case.name for case in CASES if f"| {case.name} |" not in section]
    assert not missing, f"add these rows to the Bad input table: {missing}"
