import torch

from mucrasp.allocation import AllocationConfig, allocate
from mucrasp.params import UnitCosts
from mucrasp.units import UnitScores

MLP_COST, ATTN_COST = 3, 50


def scores(n_layers=4, mlp=64, groups=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return UnitScores(
        [torch.rand(mlp, generator=g, dtype=torch.float64) * (i + 1) for i in range(n_layers)],
        [torch.rand(groups, generator=g, dtype=torch.float64) for _ in range(n_layers)],
    )


def costs(n_layers=4):
    return UnitCosts([MLP_COST] * n_layers, [ATTN_COST] * n_layers)


def kept_params(plan):
    return sum(len(layer.mlp_channels) * MLP_COST + len(layer.attn_groups) * ATTN_COST for layer in plan.layers)


def test_budget_met_within_one_block():
    values, total = scores(), 4 * (64 * MLP_COST + 4 * ATTN_COST)
    for ratio in (0.2, 0.4, 0.6):
        config = AllocationConfig(ratio=ratio, align=8, tp=1)
        kept = kept_params(allocate(values, costs(), config))
        budget = (1 - ratio) * total
        assert kept <= budget
        assert budget - kept < max(8 * MLP_COST, ATTN_COST)


def test_minimum_keep_respected():
    values = scores()
    values.mlp[0] *= 0  # a worthless layer still keeps its minimum
    values.attn[0] *= 0
    plan = allocate(values, costs(), AllocationConfig(ratio=0.6, align=8, min_mlp_fraction=0.1, min_kv_groups=1))
    assert len(plan.layers[0].mlp_channels) >= 7 and len(plan.layers[0].attn_groups) >= 1
    assert all(len(layer.mlp_channels) >= 7 and len(layer.attn_groups) >= 1 for layer in plan.layers)


def test_alignment_and_tp_divisibility():
    plan = allocate(scores(), costs(), AllocationConfig(ratio=0.45, align=8, tp=2, min_kv_groups=2))
    for layer in plan.layers:
        assert len(layer.mlp_channels) % 8 == 0
        assert len(layer.attn_groups) % 2 == 0 and len(layer.attn_groups) >= 2


def test_global_layout_is_non_uniform_and_prefers_valuable_layers():
    plan = allocate(scores(), costs(), AllocationConfig(ratio=0.4))
    widths = [len(layer.mlp_channels) for layer in plan.layers]
    assert not plan.is_uniform() and widths[-1] >= widths[0]


def test_uniform_layout_gives_equal_widths():
    plan = allocate(scores(), costs(), AllocationConfig(ratio=0.4, layout="uniform"))
    assert plan.is_uniform()
    assert kept_params(plan) <= 0.6 * 4 * (64 * MLP_COST + 4 * ATTN_COST)


def layer_pruned_shares(plan, mlp=64, groups=4):
    total = mlp * MLP_COST + groups * ATTN_COST
    return [1 - (len(x.mlp_channels) * MLP_COST + len(x.attn_groups) * ATTN_COST) / total for x in plan.layers]


def test_global_bounded_holds_every_layer_near_the_ratio():
    # Layer values grow 1x..4x with depth, so the plain knapsack strips the first layer far past the ratio.
    values, ratio, deviation = scores(), 0.4, 0.1
    unbounded = layer_pruned_shares(allocate(values, costs(), AllocationConfig(ratio=ratio)))
    assert max(unbounded) > ratio + deviation + 0.05
    plan = allocate(values, costs(), AllocationConfig(ratio=ratio, layout="global-bounded", layer_deviation=deviation))
    shares = layer_pruned_shares(plan)
    block = 8 * MLP_COST / (64 * MLP_COST + 4 * ATTN_COST)  # the floor is met without overshooting: one block short
    assert all(ratio - deviation - 1e-9 <= s <= ratio + deviation + block for s in shares), shares
    budget = (1 - ratio) * 4 * (64 * MLP_COST + 4 * ATTN_COST)
    assert budget - max(8 * MLP_COST, ATTN_COST) < kept_params(plan) <= budget


def test_global_bounded_spans_per_layer_and_global():
    values = scores()
    tight = allocate(values, costs(), AllocationConfig(ratio=0.4, layout="global-bounded", layer_deviation=0.0))
    assert max(layer_pruned_shares(tight)) - min(layer_pruned_shares(tight)) < 0.1
    loose = allocate(values, costs(), AllocationConfig(ratio=0.4, layout="global-bounded", layer_deviation=1.0))
    plain = allocate(values, costs(), AllocationConfig(ratio=0.4))
    assert loose.widths() == plain.widths()
    for a, b in zip(loose.layers, plain.layers):
        assert torch.equal(a.mlp_channels.sort().values, b.mlp_channels.sort().values)
