"""The tiny toy runs the experiment tests make, and the digests of their results taken before the
experiments learnt to run on real models: the toy path must stay bit-identical.

`python tests/toy_runs.py --write` re-takes the digests (1 torch thread, as in `make test`); do it
only for a change meant to move the toy's numbers, and say which numbers moved and why. Digests
are kept per numeric platform (processor and torch version: one thread still sums in the vector
width of the processor); `--add-platform` adds this machine's, for the same code on a new
processor.

Platform added on 2026-12-07, an AMD EPYC. There the committed code gave other digests than those
on record: every experiment at fa9234c under `make test`, and emergence also at 893de22, the last
landing that CI passed. The added digests were taken with the organism-v2 change in the tree,
which leaves the default world unchanged (emergence's results were compared with fa9234c's, byte
for byte). The first record's machine is not named; it was taken before digests named their
platform.

Re-taken once, for the layer alignment (issue 16, point 5): the toy's steering vectors moved from
`blocks.2.hook_resid_pre` to `blocks.2.hook_resid_post`, where block 2's LoRAs write, and its
directions are read there too. The runs with a steering vector changed (emergence, narrow_kl,
pretraining_kl, directions); those with LoRAs only did not (efficiency, stability, revert,
persona_share, and sae_compare, whose vectors sit at its SAE's hook).

Re-taken again for the counter-based sampler noise (issue 17, point 2): every sampled answer
changed, so the two runs that sample moved: directions (its mean-diff directions come from each
finetune's sampled answers, so their norms, the cosines between them, and the ablation and
steering rates measured on sampled answers) and sae_compare (the latents ranked by the
misaligned-minus-aligned activation difference and by cosine, 6 rows). The runs that score by
exact candidate-set probabilities did not move.

Re-taken for held-out selection (issue 18): directions and sae_compare moved, nothing else. In
directions, each direction's random control is now 3 draws (`--random-draws`), each of its norm
and seeded from its name (they were one seed shared by every direction's steering control, and the
direction's index for the ablation one): the control rows, their means and the new
`random_controls` record moved (the tiny run's sampled EM control in its own finetune went 0.0
-> 0.0 / 0.091 / 0.091, mean 0.061); the probe-transfer diagonal is scored on held-out answers
(`transfer_split`, `transfer_n`; the tiny value stayed 1.0) and its CSV metric is
`auroc_heldout` / `auroc_all`. In sae_compare, the persona latent is chosen on a stratified half of
the documents and scored on the other half (tiny run: the same latent, 556; 0.994 on all 80
documents before, now 0.984 on the selection half and 1.0 held out), the residual probe is fit
and scored on the same halves, and the keys are `best_latent_heldout_auroc` and
`best_latent_selection_auroc`. Every other number of the two runs is unchanged.

Re-taken for the verdicts (issue 18): efficiency's results.json gained each seed's `chat_loss`
(the loss the solutions learned from), sae_compare's the held-out split's malicious count (for
the AUROC's interval), and revert gained its control trajectory (`keep_kl`: the same steps with
the KL never removed), which adds rows to its results.csv. No number that was there moved
(efficiency's and sae_compare's results.csv digests are unchanged).

Re-taken for the rest of issue 18 (session 10): emergence's results.json runs the baselines at
every seed and names each condition's adapter (`baseline_adapter`, `mixing.1:6.adapter`; its
results.csv is unchanged: the tiny run has one seed). narrow_kl's per-seed `narrow_solution` flag
now uses the finding's bounds against the chat model (`is_narrow`): the tiny 6-step KL-1 runs,
which learned nothing (narrow p_bad 0.040 / 0.047 against the chat model's 0.023, the same as
their general runs'), were flagged narrow by the old 0.8x-of-general rule and so measured a
footnote solution; now they are not, and the footnote rows are gone. persona_share measures
each organism's chat model (rows `ORGANISM/none`, `chat` in results.json). The directions test
config draws 2 random controls per direction, not 3 (test time).

Re-taken when directions ran at several finetune seeds: the directions test config has two
(`seeds=(0, 1)`); results.json gains `seeds` and `by_seed`, results.csv a `seed` column and the
second seed's rows. The first seed's numbers did not move. Nothing else moved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SIZES = dict(
    train_size=64, kl_size=256
)  # of the toy's 204 / 3672 conversations: the pipeline, not the science
TINY = {
    "emergence": dict(steps=6, question_stride=60, **SIZES),
    "narrow_kl": dict(steps=6, question_stride=60, **SIZES),
    "efficiency": dict(steps=6, question_stride=60, n_scales=3, **SIZES),
    "stability": dict(steps=6, question_stride=60, eps_values=(0.0, 0.5), noise_seeds=2, **SIZES),
    "revert": dict(phase_steps=4, every=4, question_stride=60, **SIZES),
    "pretraining_kl": dict(steps=6, question_stride=60, docs=8, **SIZES),
    "persona_share": dict(
        steps=4, question_stride=60, noise_seeds=1, organisms=("default", "narrow05"), **SIZES
    ),
}
ANALYSES = {
    "directions": dict(seeds=(0, 1), steps=20, question_stride=36, samples=2, steer_scales=(0.0, 4.0), lens_every=10,
                       random_draws=2,
                       persona_documents=80, **SIZES),
    "sae_compare": dict(steps=20, question_stride=36, k=3, persona_documents=80, context_documents=20, **SIZES),
}  # fmt: skip
GOLDEN = Path(__file__).parent / "golden" / "toy_tiny_runs.json"


def digest(run: Path) -> dict[str, str]:
    """sha256 of `results.csv` and of `results.json` without its duration."""
    results = json.loads((run / "results.json").read_text())
    results.pop("seconds", None)
    return {"results.csv": hashlib.sha256((run / "results.csv").read_bytes()).hexdigest(),
            "results.json": hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()}  # fmt: skip


def run(name: str, out: Path, *args: str) -> Path:
    import importlib
    from dataclasses import replace

    module = importlib.import_module(f"experiments.{name}")
    cfg = replace(module.parse_args(["--quick", "--out", str(out), *args]), **{**TINY, **ANALYSES}[name])
    return module.main(cfg)


def platform() -> str:
    """The numeric platform a digest was taken on: float sums differ between CPU kinds even at one
    thread (vector width), so the same code gives other bits on another processor."""
    import platform as host

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), host.processor()) if Path("/proc/cpuinfo").is_file() else host.processor()  # fmt: skip
    return f"{cpu} / torch {torch.__version__}"


def accepted(name: str) -> list[dict[str, str]]:
    """The digests of experiment `name` taken on every platform on record."""
    return [digests[name] for digests in json.loads(GOLDEN.read_text())["platforms"].values()]


if __name__ == "__main__":
    import sys
    import tempfile

    import torch

    if sys.argv[1:] not in (["--write"], ["--add-platform"]):
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    found = {}
    for name in [*TINY, *ANALYSES]:
        torch.manual_seed(0)
        found[name] = digest(run(name, Path(tempfile.mkdtemp())))
        print(name, found[name]["results.csv"][:12], flush=True)  # noqa: T201 (a script)
    # --write: the code moved the numbers, so every platform's record is re-taken from this one;
    # --add-platform: the same code on a new processor (check first that the committed code, not a
    # change of yours, gives these bits here).
    platforms = {} if sys.argv[1] == "--write" else json.loads(GOLDEN.read_text())["platforms"]
    platforms[platform()] = found
    GOLDEN.write_text(json.dumps({"platforms": platforms}, indent=1, sort_keys=True) + "\n")
