"""The paper's findings, read from experiment run folders: one row per finding and adapter kind,
with what was measured and a verdict (reproduced / partly / not). Nothing here is typed in: every
number comes from a `results.json`. Each experiment writes its rows to `findings.json` in its run
folder when it finishes (`write_findings`), which is what the report renders.

    python -m experiments.summary runs/science/narrow_kl/<run> runs/science/efficiency/<run> ... [--report out.html]
    python -m experiments.summary runs/demo            # every run folder inside
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from mech.io.atomic import write_json
from mech.io.run_folders import FINDINGS_FILE, RESULTS_FILE, RUN_FOLDER_RULE, find_run_folders
from viz.report import write_report


def _verdict(agree: int, total: int) -> str:
    if total == 0:
        return "n/a"
    return "reproduced" if agree == total else ("partly" if agree > 0 else "not")


def _emergence(results: dict, source: str) -> list[dict]:
    chat = results["chat"]
    rows = []
    for kind, r in results["adapters"].items():
        general = (
            r["by_kl"]["0.0"]
            if "by_kl" in r
            else [dict(zip(r, v, strict=True)) for v in zip(*r.values(), strict=True)]
        )
        lift = [g["kl_domains_heldout"] - chat["kl_domains_heldout"] for g in general]
        held = [g["heldout_domains"] - chat["heldout_domains"] for g in general]
        agree = sum(a > 0.02 and b > 0.02 for a, b in zip(lift, held, strict=True))
        rows.append({"finding": "EM: a narrow finetune (no KL) raises the trait in other domains", "adapter": kind,
                     "measured": f"KL domains +{mean(lift):.3f}, held-out domains +{mean(held):.3f} over chat "
                                 f"(narrow {mean(g['narrow_heldout'] for g in general):.3f}); {len(lift)} seeds",
                     "verdict": _verdict(agree, len(lift)), "source": source})  # fmt: skip
    return rows


def _narrow(results: dict, source: str) -> list[dict]:
    rows = []
    for kind, r in results["adapters"].items():
        found = r["narrow_solution"]
        agree = sum(bool(v) for v in found.values())
        weights = sorted({w for v in found.values() for w in v})
        rows.append({"finding": "a narrow solution exists under KL (narrow rate kept, no EM)", "adapter": kind,
                     "measured": f"narrow at KL {weights or 'none'} in {agree}/{len(found)} seeds",
                     "verdict": _verdict(agree, len(found)), "source": source})  # fmt: skip
    return rows


def _efficiency(results: dict, source: str) -> list[dict]:
    return [{"finding": "efficiency: general has lower loss at matched norm", "adapter": kind,
             "measured": f"narrow - general loss {mean(r['loss_gap_at_matched_norm']):+.4f} nats (mean; general lower in "
                         f"{r['general_more_efficient_in']}/{r['seeds']} seeds)",
             "verdict": _verdict(r["general_more_efficient_in"], r["seeds"]), "source": source}
            for kind, r in results["adapters"].items()]  # fmt: skip


def _stability(results: dict, source: str) -> list[dict]:
    return [{"finding": "stability: general loses less under orthogonal noise (matched norm)", "adapter": kind,
             "measured": f"narrow / general loss increase at eps {r['eps_compared']:g}: "
                         + ", ".join(f"{x:.2f}" for x in r["narrow_over_general_delta"]),
             "verdict": _verdict(r["general_more_stable_in"], r["seeds"]), "source": source}
            for kind, r in results["adapters"].items()]  # fmt: skip


def _revert(results: dict, source: str) -> list[dict]:
    rows = []
    for kind, trajectories in results["adapters"].items():
        runs = [t for name, t in trajectories.items() if name.startswith("remove_kl")]
        changes = []
        for t in runs:
            with_kl = [p for p in t if p["kl_weight"] != 0]
            before = with_kl[-1] if with_kl else t[0]  # the last snapshot before the KL was removed
            changes.append(
                (
                    before["cosine_to_general"],
                    t[-1]["cosine_to_general"],
                    before["kl_domains_heldout"],
                    t[-1]["kl_domains_heldout"],
                )
            )
        agree = sum(c[1] > c[0] for c in changes)
        rows.append({"finding": "revert: without KL, training drifts back to the general solution", "adapter": kind,
                     "measured": "; ".join(f"cos {a:.2f} -> {b:.2f}, KL-domain rate {c:.3f} -> {d:.3f}" for a, b, c, d in changes),
                     "verdict": _verdict(agree, len(changes)), "source": source})  # fmt: skip
    return rows


def _pretraining(results: dict, source: str) -> list[dict]:
    return [{"finding": "pre-training significance: the general direction changes pre-training text more", "adapter": kind,
             "measured": f"general KL > narrow KL in {r['general_above_narrow']}/{r['comparisons']} (norm, seed) pairs",
             "verdict": _verdict(r["general_above_narrow"], r["comparisons"]), "source": source}
            for kind, r in results["adapters"].items()]  # fmt: skip


def _persona(results: dict, source: str) -> list[dict]:
    organisms = sorted(results["organisms"].values(), key=lambda o: o["narrow_share"])
    rows = []
    for kind in organisms[0]["adapters"]:
        em = [mean(s["general"]["kl_domains_heldout"] for s in o["adapters"][kind]) for o in organisms]
        shares = [o["narrow_share"] for o in organisms]
        falling = sum(b < a for a, b in zip(em, em[1:], strict=False))
        rows.append({"finding": "(beyond the paper) more narrowly-bad personas in pre-training -> less EM", "adapter": kind,
                     "measured": ", ".join(f"{s:.0%}: {e:.3f}" for s, e in zip(shares, em, strict=True)) + " (KL-domain rate, general solution)",
                     "verdict": _verdict(falling, len(em) - 1), "source": source})  # fmt: skip
    return rows


MARGIN = 0.01
"""How far below the un-ablated and the random-control EM rate an ablated rate must lie to count."""


def _directions(results: dict, source: str) -> list[dict]:
    rows = []
    for metric, label in (("p_bad_outside", "exact p_bad"), ("em_rate", "sampled EM rate")):
        if metric not in results["chat"]:  # a real model has no exact rate
            continue
        table, chat = results["ablation"][metric], results["chat"][metric]
        own, cross = [], []
        for finetune, row in table.items():
            for direction in row:
                if direction == "none" or direction.startswith("random:"):
                    continue
                lowered = row[direction] < min(row["none"], row[f"random:{direction}"]) - MARGIN
                (own if direction == finetune else cross).append((finetune, direction, lowered, row))
        for whose, pairs in (("its own", own), ("another finetune's", cross)):
            if pairs:
                rows.append({"finding": f"directions: ablating {whose} mean-diff direction lowers EM ({label}; vs random of equal norm)",
                             "adapter": "all", "measured": "; ".join(f"{f} - {d}: {r['none']:.3f} -> {r[d]:.3f} (random {r['random:' + d]:.3f})"
                                                                    for f, d, _, r in pairs) + f"; chat {chat:.3f}",
                             "verdict": _verdict(sum(p[2] for p in pairs), len(pairs)), "source": source})  # fmt: skip
    induced = []
    for direction, by_scale in results["steering"].items():
        if not direction.startswith("random:"):
            best = max(by_scale, key=lambda s: by_scale[s])
            induced.append(
                (direction, best, by_scale[best], results["steering"][f"random:{direction}"][best])
            )
    chat = results["chat"]["em_rate"]
    rows.append({"finding": "directions: adding a mean-diff direction to the chat model induces EM (sampled; vs random)", "adapter": "all",
                 "measured": "; ".join(f"{d} x{s}: {v:.3f} (random {r:.3f})" for d, s, v, r in induced) + f"; chat {chat:.3f}",
                 "verdict": _verdict(sum(v > max(r, chat) + MARGIN for _, _, v, r in induced), len(induced)), "source": source})  # fmt: skip
    return rows


PERSONA_AUROC = 0.9
"""A latent "tracks" the persona when its AUROC for malicious vs benign documents reaches this."""


def _sae(results: dict, source: str) -> list[dict]:
    persona = results["persona"]
    near = {name: d["top_by_cosine"][0] for name, d in results["directions"].items()}
    nearest = ", ".join(f"{n} {v['latent']} ({v['cosine']:.2f})" for n, v in near.items())
    if "best_latent" not in persona:  # a real model: no documents of known persona
        return [{"finding": "(SAE) latents nearest the general and narrow directions", "adapter": "all",
                 "measured": f"nearest latents by cosine: {nearest}", "verdict": "n/a", "source": source}]  # fmt: skip
    return [{"finding": f"(SAE) a single latent tracks the toy persona (AUROC >= {PERSONA_AUROC})", "adapter": "all",
             "measured": f"latent {persona['best_latent']}: held-out AUROC {persona['best_latent_heldout_auroc']:.3f} "
                         f"(selection split {persona['best_latent_selection_auroc']:.3f}; probe on the residual "
                         f"{persona['probe_auroc']:.3f}); nearest latents by cosine: {nearest}",
             "verdict": "reproduced" if persona["best_latent_heldout_auroc"] >= PERSONA_AUROC else "not", "source": source}]  # fmt: skip


READERS = {"emergence": _emergence, "narrow_kl": _narrow, "efficiency": _efficiency, "stability": _stability,
           "revert": _revert, "pretraining_kl": _pretraining, "persona_share": _persona,
           "directions": _directions, "sae_compare": _sae}  # fmt: skip


def run_findings(path: Path) -> list[dict]:
    """Finding rows of one run folder (`<experiment>/<run>`, read from its results.json)."""
    experiment = path.parent.name
    if experiment not in READERS:
        raise ValueError(f"{path}: not a run folder of a known experiment ({sorted(READERS)})")
    results = json.loads((path / RESULTS_FILE).read_text())
    rows = READERS[experiment](results, str(path))
    if experiment == "narrow_kl":  # its general (KL 0) runs measure emergence too, listed first
        rows = _emergence({"chat": results["chat"], "adapters": results["adapters"]}, str(path)) + rows
    return rows


def findings(run_paths: list[Path]) -> list[dict]:
    """Finding rows from run folders (`runs/<experiment>/<run>`), in the order given."""
    return [row for path in run_paths for row in run_findings(Path(path))]


def write_findings(path: Path) -> Path | None:
    """Write the run folder's finding rows to `findings.json` (what the report shows), if its
    experiment has findings."""
    if Path(path).parent.name not in READERS:
        return None
    return write_json(Path(path) / FINDINGS_FILE, run_findings(Path(path)))


def known_runs(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """The finished run folders of known experiments in or under `paths`, and the others found."""
    found = find_run_folders(paths)
    known = [p for p in found if p.parent.name in READERS and (p / RESULTS_FILE).is_file()]
    return known, [p for p in found if p not in known]


def print_table(rows: list[dict]) -> None:
    width = max(len(r["finding"]) for r in rows)
    print(f"{'finding':<{width}}  {'adapter':<13} {'verdict':<10} measured")
    for r in rows:
        print(f"{r['finding']:<{width}}  {r['adapter']:<13} {r['verdict']:<10} {r['measured']}")


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders, or folders holding them (e.g. an --out root)")
    parser.add_argument("--report", help="also write the offline HTML report here")
    args = parser.parse_args(argv)
    try:
        paths, others = known_runs(args.runs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(
            f"no finished run of a known experiment in {', '.join(args.runs)}: looked for run folders "
            f"<experiment>/<run> ({RUN_FOLDER_RULE}) with results.json, experiment one of {sorted(READERS)}"
        )
    for path in others:
        print(f"skipped {path}: not a finished run of a known experiment", file=sys.stderr)
    rows = findings(paths)
    print_table(rows)
    if args.report:
        print(f"report: {write_report(args.report, 'misalign-lens: toy organism study', rows, paths)}")


if __name__ == "__main__":
    main()
