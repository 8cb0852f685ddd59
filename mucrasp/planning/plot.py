"""Memory and predicted decode throughput against ratio, one line per weight format, with the profile's limits."""

from __future__ import annotations

from pathlib import Path

from mucrasp.planning.planner import Plan


def plot_plan(plan: Plan, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    # The chosen format (or the last weighed, when nothing works) stacked; every format's total as a line.
    lead = plan.weights or plan.formats[-1]
    rows = plan.rows_for(lead)
    ratios = [r.ratio for r in rows]
    fig, (mem, speed) = plt.subplots(1, 2, figsize=(11, 4))
    mem.stackplot(
        ratios,
        [r.weights_gb for r in rows],
        [r.kv_gb for r in rows],
        [r.activation_gb + r.reserve_gb for r in rows],
        labels=[f"weights ({lead})", "KV cache", "activations + runtime"],
        alpha=0.7,
    )
    for name in plan.formats:
        if name != lead:
            mem.plot(ratios, [r.total_gb for r in plan.rows_for(name)], linestyle="-.", label=f"total, {name}")
    mem.axhline(plan.rows[0].budget_gb, color="red", linestyle="--", label=f"{plan.profile} budget")
    mem.set(xlabel="pruning ratio", ylabel="GB", title="Serving memory")
    mem.legend(fontsize=8)
    for name in plan.formats:
        marker = "o" if name == lead else "."
        speed.plot(ratios, [r.decode_tokens_per_s for r in plan.rows_for(name)], marker=marker, label=name)
    target = plan.workload["target_tokens_per_s"]
    if target:
        speed.axhline(target, color="red", linestyle="--", label="target")
    speed.set(xlabel="pruning ratio", ylabel="tokens/s (aggregate)", title="Decode throughput")
    speed.legend(fontsize=8)
    for axis in (mem, speed):
        if plan.ratio is not None:
            axis.axvline(plan.ratio, color="green", linestyle=":")
    chosen = f"chosen: {plan.weights}, ratio {plan.ratio:g}" if plan.ratio is not None else "nothing works"
    fig.suptitle(f"{Path(plan.model).name} on {plan.profile}, {plan.dtype}; {chosen}")
    fig.tight_layout()
    from mucrasp.atomic_io import write_figure_atomic

    write_figure_atomic(Path(path), fig, dpi=100)
    plt.close(fig)
    return Path(path)
