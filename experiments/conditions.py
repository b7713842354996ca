"""The finetuned conditions of a study: the adapter kinds, their learning rates and finetune
configs, training one condition (saved and measured), a general / narrow pair of solutions, and
loading a saved solution from an earlier run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformer_lens import HookedTransformer

from experiments.run_dir import RunDir
from experiments.setting import Setting
from mech.adapters.base import Adapter, AdapterStack
from mech.adapters.lora import MATRICES, LoraAdapter
from mech.adapters.saving import load_adapter, save_adapter
from mech.adapters.steering import SteeringVector
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune

ADAPTER_KINDS = ("steering", "lora_r1", "lora_r8", "lora_r32", "steering_all")


"""steering: one vector at the setting's layer (the paper's); lora_r1: rank 1 on that block's W_out
(the paper's); lora_r8 / lora_r32: every matrix of that block (rsLoRA, the paper's rank-32 kind;
rank 8 is what the round-2 notes recommend at toy scale); steering_all: a vector entering every
block, `blocks.n.hook_resid_pre` for every n (the notes' low-capacity reference)."""


def make_adapter(kind: str, model: HookedTransformer, layer: int, seed: int, point: str = "post") -> Adapter:
    """A fresh adapter of `kind` for block `layer`. Layer L is one place for every kind, as in the
    paper (vector and rank-1 LoRA both on `layers[L].mlp.down_proj`): a steering vector adds at
    `blocks.L.hook_resid_<point>` ("post" by default: where block L's output, and so its LoRA,
    writes), a LoRA adapts block L's matrices."""
    d = model.cfg.d_model
    if kind == "steering":
        return SteeringVector(d, layer=layer, point=point, init_std=0.01, seed=seed)
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


def setting_adapter(setting: Setting, kind: str, seed: int) -> Adapter:
    """A fresh adapter of `kind` at the setting's layer and steering point."""
    return make_adapter(kind, setting.model, setting.layer, seed, setting.steering_point)


def finetune_config(
    setting: Setting,
    kind: str,
    *,
    steps: int,
    kl_weight: float,
    seed: int,
    l2_weight: float = 0.0,
    batch_size: int | None = None,
) -> FinetuneConfig:
    """The setting's rate and batches (toy: full-batch on the small narrow set, KL minibatches of
    128, as in the round-2 notes)."""
    batch_size = setting.batch_size if batch_size is None else batch_size
    return FinetuneConfig(steps=steps, lr=setting.learning_rate(kind), batch_size=batch_size,
                          kl_batch_size=setting.kl_batch_size, kl=KLSchedule(kl_weight), l2_weight=l2_weight,
                          seed=seed, track_kl=kl_weight != 0, cache_device=setting.cache_device)  # fmt: skip


def train_condition(
    setup: Setting,
    run: RunDir,
    *,
    kind: str,
    seed: int,
    name: str,
    steps: int,
    kl_weight: float = 0.0,
    l2_weight: float = 0.0,
    data: Sequence | None = None,
    questions: Sequence | None = None,
) -> tuple[Adapter, list[dict], dict]:
    """Finetune a fresh `kind` adapter, save it, measure it: (adapter, tidy rows, headline)."""
    data = setup.train if data is None else data
    adapter = setting_adapter(setup, kind, seed)
    # Full-batch sets larger than the narrow one (dilutions) train in minibatches of its size:
    # equal compute per step.
    batch = len(setup.train) if setup.batch_size is None and len(data) > len(setup.train) else None
    ft_cfg = finetune_config(
        setup, kind, steps=steps, kl_weight=kl_weight, seed=seed, l2_weight=l2_weight, batch_size=batch
    )
    result = finetune(
        setup.model, adapter, data, setup.kl_set(adapter) if kl_weight else None, ft_cfg, progress=False,
        cache=setup.cache,
    )  # fmt: skip
    save_adapter(run.path / "adapters" / f"{name}_kl{kl_weight:g}_seed{seed}", adapter, setup.model,
                 config={"finetune": ft_cfg.to_dict(), "name": name, "kl_reference": result.reference_record})  # fmt: skip
    rows = setup.measure(adapter, name=name, kl_weight=kl_weight, seed=seed, questions=questions)
    extra = {"loss": result.final.ce, "norm": adapter.norm()}
    if result.final.kl is not None:
        extra["kl"] = result.final.kl
    rows += [{"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": setup.narrow_domain, "role": "narrow",
              "split": "train", "metric": metric, "value": value} for metric, value in extra.items()]  # fmt: skip
    return adapter, rows, {**setup.headline(rows), **extra}


def solution_pair(
    setup: Setting,
    run: RunDir,
    *,
    kind: str,
    seed: int,
    steps: int,
    narrow_kl: float,
    l2_weight: float,
    questions: Sequence | None = None,
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
    setup: Setting,
    run_path: Path,
    *,
    kind: str,
    seed: int,
    kl_weight: float,
    questions: Sequence | None = None,
) -> tuple[Adapter, list[dict], dict]:
    """A solution saved by `train_condition` in another run, measured here like a fresh one."""
    path = run_path / "adapters" / f"{kind}_kl{kl_weight:g}_seed{seed}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {kind} solution with KL {kl_weight:g} and seed {seed} in that run"
        )
    adapter, _ = load_adapter(path, setup.model)
    data = CachedChatSet.build(setup.model, setup.train, adapter.entry(setup.model), batch_size=setup.batch_size,
                               name="train", cache=setup.cache)  # fmt: skip
    rows = setup.measure(adapter, name=kind, kl_weight=kl_weight, seed=seed, questions=questions)
    extra = {"loss": data.mean_cross_entropy(setup.model, adapter), "norm": adapter.norm()}
    rows += [{"adapter": kind, "kl_weight": kl_weight, "seed": seed, "domain": setup.narrow_domain, "role": "narrow",
              "split": "train", "metric": metric, "value": value} for metric, value in extra.items()]  # fmt: skip
    return adapter, rows, {**setup.headline(rows), **extra}
