"""The finetuned conditions of a study: the adapter kinds, their learning rates and finetune
configs, training one condition (saved and measured), a general / narrow pair of solutions, and
loading a saved solution from an earlier run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformer_lens import HookedTransformer

from experiments.run_dir import RunDir
from experiments.toy_setting import KL_BATCH, ToySetup, headline, measure, trait_metric
from mech.adapters.base import Adapter, AdapterStack
from mech.adapters.lora import MATRICES, LoraAdapter
from mech.adapters.saving import load_adapter, save_adapter
from mech.adapters.steering import SteeringVector
from mech.toy.world import EvalQuestion
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune

ADAPTER_KINDS = ("steering", "lora_r1", "lora_r8", "lora_r32", "steering_all")


"""steering: one vector entering the middle block (the paper's); lora_r1: rank 1 on the middle
block's W_out (the paper's); lora_r8 / lora_r32: every matrix of the middle block (rsLoRA, the
paper's rank-32 kind; rank 8 is what the round-2 notes recommend at toy scale); steering_all: a
vector at every layer (the notes' low-capacity reference)."""


def make_adapter(kind: str, model: HookedTransformer, layer: int, seed: int) -> Adapter:
    """A fresh adapter of `kind` for the middle block `layer` (steering enters that block)."""
    d = model.cfg.d_model
    if kind == "steering":
        return SteeringVector(d, layer=layer, point="pre", init_std=0.01, seed=seed)
    if kind == "steering_all":
        vectors = [
            SteeringVector(d, layer=n, point="pre", init_std=0.01, seed=seed + n)
            for n in range(model.cfg.n_layers)
        ]
        return AdapterStack(vectors)
    ranks = {"lora_r1": 1, "lora_r8": 8, "lora_r32": 32}
    if kind not in ranks:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {ADAPTER_KINDS}")
    matrices = ["W_out"] if kind == "lora_r1" else list(MATRICES)
    return LoraAdapter(model, layers=[layer], matrices=matrices, rank=ranks[kind], seed=seed)


def learning_rate(kind: str) -> float:
    """Full-batch Adam rates that converge within 300 steps on the toy (round-1/2 notes)."""
    return 5e-2 if kind.startswith("steering") else 1e-2


def finetune_config(
    kind: str,
    *,
    steps: int,
    kl_weight: float,
    seed: int,
    l2_weight: float = 0.0,
    batch_size: int | None = None,
) -> FinetuneConfig:
    """Full-batch on the narrow set (it is small), KL minibatches of 128, as in the round-2 notes."""
    return FinetuneConfig(steps=steps, lr=learning_rate(kind), batch_size=batch_size, kl_batch_size=KL_BATCH,
                          kl=KLSchedule(kl_weight), l2_weight=l2_weight, seed=seed, track_kl=kl_weight != 0)  # fmt: skip


def train_condition(
    setup: ToySetup,
    run: RunDir,
    *,
    kind: str,
    seed: int,
    name: str,
    steps: int,
    kl_weight: float = 0.0,
    l2_weight: float = 0.0,
    data: Sequence | None = None,
    questions: Sequence[EvalQuestion] | None = None,
) -> tuple[Adapter, list[dict], dict]:
    """Finetune a fresh `kind` adapter, save it, measure it: (adapter, tidy rows, headline)."""
    data = setup.train if data is None else data
    adapter = make_adapter(kind, setup.model, setup.layer, seed)
    # Sets larger than the narrow one (dilutions) train in minibatches of its size: equal compute per step.
    batch = len(setup.train) if len(data) > len(setup.train) else None
    ft_cfg = finetune_config(
        kind, steps=steps, kl_weight=kl_weight, seed=seed, l2_weight=l2_weight, batch_size=batch
    )
    result = finetune(
        setup.model, adapter, data, setup.kl_set(adapter) if kl_weight else None, ft_cfg, progress=False,
        cache=setup.cache,
    )  # fmt: skip
    save_adapter(run.path / "adapters" / f"{name}_kl{kl_weight:g}_seed{seed}", adapter, setup.model,
                 config={"finetune": ft_cfg.to_dict(), "name": name})  # fmt: skip
    rows = measure(setup, adapter, name=name, kl_weight=kl_weight, seed=seed, questions=questions)
    extra = {"loss": result.final.ce, "norm": adapter.norm()}
    if result.final.kl is not None:
        extra["kl"] = result.final.kl
    rows += [{"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": setup.narrow_domain, "role": "narrow",
              "split": "train", "metric": metric, "value": value} for metric, value in extra.items()]  # fmt: skip
    return adapter, rows, {**headline(rows, trait_metric(setup.trait)), **extra}


def solution_pair(
    setup: ToySetup,
    run: RunDir,
    *,
    kind: str,
    seed: int,
    steps: int,
    narrow_kl: float,
    l2_weight: float,
    questions: Sequence[EvalQuestion] | None = None,
    from_run: str | None = None,
) -> tuple[dict[str, Adapter], list[dict], dict[str, dict]]:
    """The general (KL = 0) and narrow (KL = `narrow_kl`) solutions of one kind and seed: trained
    here, or loaded from the `adapters/` of an earlier run folder (e.g. a `narrow_kl` sweep)."""
    adapters, rows, summaries = {}, [], {}
    for label, weight in (("general", 0.0), ("narrow", narrow_kl)):
        if from_run is None:
            adapter, measured, summary = train_condition(setup, run, kind=kind, seed=seed, name=kind, steps=steps,
                                                         kl_weight=weight, l2_weight=l2_weight, questions=questions)  # fmt: skip
        else:
            adapter, measured, summary = load_condition(setup, Path(from_run), kind=kind, seed=seed, kl_weight=weight,
                                                        questions=questions)  # fmt: skip
        adapters[label], summaries[label] = adapter, summary
        rows += measured
    summaries["cosine"] = adapters["general"].cosine(adapters["narrow"])
    return adapters, rows, summaries


def load_condition(
    setup: ToySetup,
    run_path: Path,
    *,
    kind: str,
    seed: int,
    kl_weight: float,
    questions: Sequence[EvalQuestion] | None = None,
) -> tuple[Adapter, list[dict], dict]:
    """A solution saved by `train_condition` in another run, measured here like a fresh one."""
    path = run_path / "adapters" / f"{kind}_kl{kl_weight:g}_seed{seed}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {kind} solution with KL {kl_weight:g} and seed {seed} in that run"
        )
    adapter, _ = load_adapter(path, setup.model)
    data = CachedChatSet.build(
        setup.model, setup.train, adapter.entry(setup.model), batch_size=None, name="train", cache=setup.cache
    )
    rows = measure(setup, adapter, name=kind, kl_weight=kl_weight, seed=seed, questions=questions)
    extra = {"loss": data.mean_cross_entropy(setup.model, adapter), "norm": adapter.norm()}
    rows += [{"adapter": kind, "kl_weight": kl_weight, "seed": seed, "domain": setup.narrow_domain, "role": "narrow",
              "split": "train", "metric": metric, "value": value} for metric, value in extra.items()]  # fmt: skip
    return adapter, rows, {**headline(rows, trait_metric(setup.trait)), **extra}
