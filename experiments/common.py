"""What the experiment scripts share: the toy setup, the adapter kinds, measurements as tidy rows,
and writing `results.json` / `results.csv`.

Tidy rows have the columns of `COLUMNS`; `role` says how a domain relates to the finetune:
`narrow` (the finetuned domain), `kl` (in the KL set), `heldout_domain` (in neither).
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import mean
from typing import Literal

from transformer_lens import HookedTransformer

from experiments.run_dir import RunDir
from mech.adapter_io import load_adapter, save_adapter
from mech.adapters import Adapter, AdapterStack, SteeringVector
from mech.atomic import atomic_write
from mech.cache import ContentCache
from mech.finetune import CachedChatSet, FinetuneConfig, KLSchedule, finetune
from mech.lora import MATRICES, LoraAdapter
from mech.model import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import p_bad_by_domain
from mech.toy.world import EvalQuestion, World

Trait = Literal["misalignment", "technical"]
COLUMNS = ("adapter", "kl_weight", "seed", "domain", "role", "split", "metric", "value", "scale", "eps")
"""`scale` and `eps` are set on rows of scaling and noise curves, empty elsewhere."""

ADAPTER_KINDS = ("steering", "lora_r1", "lora_r8", "lora_r32", "steering_all")
"""steering: one vector entering the middle block (the paper's); lora_r1: rank 1 on the middle
block's W_out (the paper's); lora_r8 / lora_r32: every matrix of the middle block (rsLoRA, the
paper's rank-32 kind; rank 8 is what the round-2 notes recommend at toy scale); steering_all: a
vector at every layer (the notes' low-capacity reference)."""


@dataclass(frozen=True)
class StudyConfig:
    """Fields every experiment shares; each script's `Config` extends it (and may change defaults)."""

    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8", "lora_r32")
    seeds: tuple[int, ...] = (0, 1, 2)
    l2_weight: float = 1e-3
    """Norm control on the update's squared norm, alike for general and narrow runs."""
    question_stride: int = 1
    """Measure on every `question_stride`-th evaluation question (1 = all)."""
    out: str = "runs"
    cache: bool = False
    """Reuse residuals and reference log-probs from `<out>/cache` (content-addressed: a changed
    model, data set, setting or code version is recomputed). Off by default: on the toy the
    forward passes are cheaper than the disk (a quick narrow_kl caches ~200 MB); on a 14B model
    the residuals at layer 24 and the reference log-probs are what is worth keeping."""


@dataclass(frozen=True)
class PairConfig(StudyConfig):
    """The analyses of a general (KL 0) / narrow (KL `narrow_kl`) pair of solutions."""

    steps: int = 300
    narrow_kl: float = 10.0
    from_run: str | None = None
    """Analyse the solutions saved by an earlier run (e.g. `narrow_kl`) instead of training."""


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


KL_BATCH = 128
"""KL minibatch, as in the round-2 notes."""


def learning_rate(kind: str) -> float:
    """Full-batch Adam rates that converge within 300 steps on the toy (round-1/2 notes)."""
    return 5e-2 if kind.startswith("steering") else 1e-2


@dataclass
class ToySetup:
    model: HookedTransformer
    world: World
    narrow_domain: str
    trait: Trait
    train: list[list[dict[str, str]]]
    kl: list[list[dict[str, str]]]
    questions: list[EvalQuestion]
    cache: ContentCache | None = None
    _kl_sets: dict = field(default_factory=dict)

    def kl_set(self, adapter: Adapter) -> CachedChatSet:
        """The KL set cached at `adapter`'s entry, built once per entry and shared by every run."""
        site = adapter.entry(self.model)
        if site not in self._kl_sets:
            self._kl_sets[site] = CachedChatSet.build(
                self.model, self.kl, site, batch_size=KL_BATCH, name="kl", cache=self.cache
            )
        return self._kl_sets[site]

    @property
    def layer(self) -> int:
        return self.model.cfg.n_layers // 2

    def role(self, domain: str) -> str:
        if domain == self.narrow_domain:
            return "narrow"
        return "kl" if domain in self.world.kl_domains(self.narrow_domain) else "heldout_domain"


def toy_setup(organism: str = "default", *, narrow_domain: str = "medical", trait: Trait = "misalignment",
              kl_size: int | None = None, seed: int = 0, cache: ContentCache | None = None) -> ToySetup:  # fmt: skip
    """The shipped organism `organism` with its narrow training set and KL set for `narrow_domain`."""
    world = organism_world(organism)
    if narrow_domain not in world.names:
        raise ValueError(f"unknown narrow domain {narrow_domain!r}; the world has {world.names}")
    model = load_model("toy" if organism == "default" else f"toy:{organism}")
    train = [r["messages"] for r in world.narrow_train_set(narrow_domain, trait)]
    kl = [r["messages"] for r in world.kl_set(narrow_domain, trait)]
    if kl_size is not None and kl_size < len(kl):
        kl = random.Random(seed).sample(kl, kl_size)
    return ToySetup(model, world, narrow_domain, trait, train, kl, world.eval_questions(), cache)


def study_cache(cfg: StudyConfig) -> ContentCache | None:
    """The content cache of a study's output root, if the config asks for one."""
    return ContentCache(Path(cfg.out) / "cache") if cfg.cache else None


def trait_metric(trait: Trait) -> str:
    return "p_bad" if trait == "misalignment" else "p_technical"


def measure(setup: ToySetup, adapter: Adapter | None, *, name: str, kl_weight: float, seed: int,
            questions: Sequence[EvalQuestion] | None = None) -> list[dict]:  # fmt: skip
    """Candidate-set trait probability per domain and topic split, with `adapter` active."""
    questions = setup.questions if questions is None else questions
    if adapter is None:
        by_domain = p_bad_by_domain(setup.model, setup.world, questions)
    else:
        with adapter.applied(setup.model):
            by_domain = p_bad_by_domain(setup.model, setup.world, questions)
    metric = trait_metric(setup.trait)
    rows = []
    for key, values in by_domain.items():
        domain, split = key.split("/")
        rows.append({"adapter": name, "kl_weight": kl_weight, "seed": seed, "domain": domain,
                     "role": setup.role(domain), "split": split, "metric": metric, "value": values[metric]})  # fmt: skip
    return rows


def headline(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """Mean trait probability on the narrow domain's held-out topics, the KL domains' held-out
    topics, and the domains outside both (all topics)."""
    rows = [r for r in rows if r["metric"] == metric]

    def avg(role: str, split: str) -> float:
        values = [r["value"] for r in rows if r["role"] == role and r["split"] == split]
        return mean(values) if values else float("nan")

    return {"narrow_heldout": avg("narrow", "heldout"), "kl_domains_heldout": avg("kl", "heldout"),
            "heldout_domains": avg("heldout_domain", "all")}  # fmt: skip


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """A CSV with `columns` (other keys ignored, missing ones empty), written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def write_rows(run: RunDir, rows: Sequence[dict]) -> None:
    """`results.csv` in tidy long format, one measurement per row."""
    write_csv(run.path / "results.csv", rows, COLUMNS)


TABLE_COLUMNS = ("analysis", "a", "b", "metric", "value")
"""`results.csv` of the direction experiments: `analysis` names a table, `a` and `b` its row and
column (e.g. ablation: finetune, direction; cosine: vector, vector), `metric` what `value` is."""


def write_table(run: RunDir, rows: Sequence[dict]) -> None:
    """`results.csv` in the `TABLE_COLUMNS` long format."""
    write_csv(run.path / "results.csv", rows, TABLE_COLUMNS)


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


def curve_rows(
    frame, *, adapter: str, kl_weight: float, seed: int, domain: str, x: str, metric: str
) -> list[dict]:
    """Tidy rows from a `mech.analysis` curve (`x` is "scale" or "eps")."""
    return [{"adapter": adapter, "kl_weight": kl_weight, "seed": seed, "domain": domain, "role": "narrow",
             "split": "train", "metric": metric, "value": float(r[metric]), x: float(r[x])}
            for r in frame.to_dict(orient="records")]  # fmt: skip


def save_figure(run: RunDir, name: str, fig, data=None) -> Path:
    """Write `figures/<name>.png` and, given `data` (a pandas DataFrame: the tidy rows the figure
    plots; for a heatmap, its table with the index as a column), `figures/<name>.csv` next to it.
    Returns the PNG's path."""
    from viz.figures import save

    path = run.path / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save(fig, Path(tmp), format="png"))
    if data is not None:
        atomic_write(path.with_suffix(".csv"), lambda tmp: data.to_csv(tmp, index=False))
    return path


def parse_config(config_cls, quick: dict, description: str | None, argv: Sequence[str] | None = None):
    """Command-line flags from a Config dataclass: `--field-name VALUE` for every field (tuples
    as comma-separated lists), plus `--quick`, which applies `quick` before any flag."""
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (<= 60 s on 2 cores), for tests")
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        default, flag = getattr(defaults, f.name), "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, help=f"comma-separated (default: {','.join(map(str, default))})")
        elif isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"default: {default}"
            )
        elif f.name == "trait":
            parser.add_argument(flag, choices=("misalignment", "technical"), help=f"default: {default}")
        else:
            parser.add_argument(
                flag, type=type(default) if default is not None else str, help=f"default: {default}"
            )
    args = parser.parse_args(argv)
    cfg = replace(defaults, **quick) if args.quick else defaults
    overrides = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name)
        if value is None:
            continue
        if isinstance(getattr(defaults, f.name), tuple):
            element = type(getattr(defaults, f.name)[0]) if getattr(defaults, f.name) else str
            value = tuple(element(v.strip()) for v in value.split(",") if v.strip())
        overrides[f.name] = value
    return replace(cfg, **overrides)


def finish(run: RunDir, rows: Sequence[dict], results: dict, started: float, *, table: bool = False) -> Path:
    """Write `results.csv` (`COLUMNS` layout, or `TABLE_COLUMNS` with `table`) and `results.json`
    (with the run's duration) and mark the run done."""
    results["seconds"] = time.perf_counter() - started
    (write_table if table else write_rows)(run, rows)
    run.save_results(results)
    run.set_status("done")
    return run.path
