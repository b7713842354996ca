"""The benchmark's markdown tables: measured cases, components, the extrapolated table and what
would fit after each mitigation."""

from __future__ import annotations

import math

from benchmarks.memory.shapes import GIB, H100_GIB, H200_GIB, KINDS


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.1f}"


def fits(total: float) -> str:
    """The smallest device that holds `total` bytes (allocator slack and the CUDA context not included)."""
    if total <= H100_GIB * GIB:
        return "1 H100"
    if total <= H200_GIB * GIB:
        return "1 H200"
    return f">= {math.ceil(total / (H100_GIB * GIB))} H100 split"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model (adapter block) | batch | adapter | weights | adapter + AdamW | cached residuals "
        "| reference: top-k (exact) | step, traced | step, formula | weight copies no longer kept | total | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['layer']}) | {r['batch']} | {r['adapter']} | {_gib(r['weights'])} "
            f"| {r['adapter_state'] / 2**20:.2f} MiB | {_gib(r['residual_cache'])} "
            f"| {_gib(r['reference_topk'])} ({_gib(r['reference_exact'])}) | {_gib(r['step_traced'])} "
            f"| {_gib(r['step_estimate'])} | {_gib(r['weight_copies_avoided'])} | **{_gib(r['total_topk'])}** "
            f"| {fits(r['total_topk'])} |"
        )
    return "\n".join(lines) + "\n"


def mitigation_table(rows: list[dict]) -> str:
    """Totals (GiB): as TransformerLens's copies made them, today, without the KL term (alone),
    then with the caches and (not implemented) the lower blocks in host memory (cumulative)."""
    lines = [
        "| model, batch, adapter | with TransformerLens's weight copies kept (before; estimate) | today (caches on the GPU) "
        '| no KL term (`kl_data=None`) | caches in host memory (`cache_device="cpu"`) '
        "| + blocks below the adapter in host memory (not implemented) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = r["step_parts"]
        today = r["total_topk"]
        kl = (
            sum(v for k, v in parts.items() if k.startswith("kl_"))
            + r["reference_topk"]
            + r["residual_cache_kl"]
        )
        no_kl = today - kl
        before = today + r["weight_copies_avoided"]
        host_cache = today - r["caches_on_device"] + r["caches_in_flight"]
        host_lower = host_cache - r["blocks_below_adapter"]
        cells = " | ".join(f"{_gib(x)} ({fits(x)})" for x in (before, today, no_kl, host_cache, host_lower))
        lines.append(f"| {r['model']}, {r['batch']}, {r['adapter']} | {cells} |")
    return "\n".join(lines) + "\n"


def components_table(cases: list[dict]) -> str:
    """The measured per-item costs, beside the formula's."""
    lines = [
        "| model | weights (formula) | cached residual / token | reference / assistant token: exact, top-256 "
        "| saved by the tail / assistant token: CE, exact KL, top-k KL | tail constant (a W_U copy before) "
        "| adapter + grad + AdamW: steering, r1, r32 (formula) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        h = c["head"]
        state = [c["kinds"][k]["step"]["adapter_state"] for k in KINDS]
        formula = [c["kinds"][k]["step"]["adapter_state_formula"] for k in KINDS]
        lines.append(
            f"| {c['model']} | {c['weights_bytes'] / 2**20:.1f} MiB ({c['weights_formula_bytes'] / 2**20:.1f}) "
            f"| {c['residual_per_token']:.0f} B | {h['reference_exact_per_token']:.0f} B, {h['reference_topk_per_token']:.0f} B "
            f"| {h['ce_per_token']:.0f}, {h['exact_per_token']:.0f}, {h['topk_per_token']:.0f} B "
            f"| {h['ce_constant'] / 2**20:.2f} MiB ({h['w_u_copy_formula'] / 2**20:.2f}) "
            f"| {', '.join(f'{b / 1024:.0f}' for b in state)} KiB ({', '.join(f'{b / 1024:.0f}' for b in formula)}) |"
        )
    return "\n".join(lines) + "\n"


def measured_table(cases: list[dict]) -> str:
    lines = [
        "| model | adapter | per block: constant | per token | per token per key position "
        "| measured / formula (per token, per key position) | saved, 3 sizes: measured / formula | step peak, engine | formula | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for kind, fit in case["kinds"].items():
            ratio = fit.get("ratio")
            ratios = "-" if ratio is None else ", ".join(f"{ratio[k]:.3f}" for k in ratio)
            saved = ", ".join(f"{v:.4f}" for v in fit["saved_ratio_to_formula"].values())
            step = fit["step"]
            lines.append(
                f"| {case['model']} | {kind} | {fit['constant_per_block'] / 2**20:.1f} MiB "
                f"| {fit['per_token_per_block'] / 1024:.1f} KiB | {fit['per_token_per_key_per_block']:.1f} B "
                f"| {ratios} | {saved} | {step['peak'] / 2**20:.1f} MiB | {step['estimate'] / 2**20:.1f} MiB "
                f"| {step['ratio_to_estimate']:.4f} |"
            )
    return "\n".join(lines) + "\n"
