"""The five calibration baselines: they run through the same pruning path, and FLAP's bias
compensation is exact."""

import copy

import pytest
import torch
from calib_helpers import tiny_vl_calibration

from mucrasp.adapters.base import _complement, _expand
from mucrasp.pruning import prune_in_memory
from mucrasp.scoring import ScoringContext, get_method
from mucrasp.scoring.input_stats import collect_input_statistics


@pytest.fixture(scope="module")
def vl_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vl")
    return tiny_vl_calibration(folder)


@pytest.mark.parametrize("method", ["taylor", "llm-pruner", "wanda-sp", "flap", "random"])
def test_baseline_prunes_to_the_ratio(vl_setup, method):
    model, adapter, batches = vl_setup
    pruned = copy.deepcopy(model)
    outcome = prune_in_memory(pruned, adapter, 0.3, method=method, calibration=batches)
    assert 0.3 <= outcome.ratio_achieved < 0.4
    assert outcome.layout == get_method(method).default_layout
    assert torch.isfinite(pruned(**batches[0].inputs).logits).all()
    assert get_method(method).citation


def test_wanda_sp_defaults_to_uniform_widths(vl_setup):
    model, adapter, batches = vl_setup
    assert prune_in_memory(copy.deepcopy(model), adapter, 0.3, method="wanda-sp", calibration=batches).plan.is_uniform()


def test_random_is_seeded(vl_setup):
    model, adapter, _ = vl_setup
    method = get_method("random")
    a = method.score(model, adapter, ScoringContext(ratio=0.3, options={"seed": 1})).values
    b = method.score(model, adapter, ScoringContext(ratio=0.3, options={"seed": 1})).values
    c = method.score(model, adapter, ScoringContext(ratio=0.3, options={"seed": 2})).values
    assert all(torch.equal(x, y) for x, y in zip(a.mlp, b.mlp)) and not torch.equal(a.mlp[0], c.mlp[0])


def test_llm_pruner_differs_from_unit_taylor(vl_setup):
    model, adapter, batches = vl_setup
    taylor = get_method("taylor").score(model, adapter, ScoringContext(0.3, calibration=batches[:1])).values
    element = get_method("llm-pruner").score(model, adapter, ScoringContext(0.3, calibration=batches[:1])).values
    assert not torch.allclose(taylor.mlp[0], element.mlp[0])


def test_flap_bias_compensation_equals_mean_replacement(vl_setup):
    model, adapter, batches = vl_setup
    pruned = copy.deepcopy(model)
    outcome = prune_in_memory(pruned, adapter, 0.4, method="flap", calibration=batches)
    stats = collect_input_statistics(model, adapter, batches)
    head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)

    def replace_with_mean(dropped, means):
        def pre_hook(module, args):
            x = args[0].clone()
            x[..., dropped] = means[dropped].to(x.dtype)
            return (x,)

        return pre_hook

    handles = []
    for i, (layer, keep) in enumerate(zip(adapter.decoder_layers(model), outcome.plan.layers)):
        _, _, down = adapter.mlp_projections(layer)
        *_, o_proj = adapter.attention_projections(layer)
        mlp_drop = _complement(keep.mlp_channels, down.in_features)
        groups = o_proj.in_features // (head_dim * group)
        o_drop = _expand(_expand(_complement(keep.attn_groups, groups), group), head_dim)
        handles.append(down.register_forward_pre_hook(replace_with_mean(mlp_drop, stats.down[i].mean())))
        handles.append(o_proj.register_forward_pre_hook(replace_with_mean(o_drop, stats.o_proj[i].mean())))
    try:
        with torch.no_grad():
            for batch in batches:
                reference = model(**batch.inputs).logits
                torch.testing.assert_close(pruned(**batch.inputs).logits, reference, atol=1e-5, rtol=0)
    finally:
        for handle in handles:
            handle.remove()
    assert adapter.decoder_layers(pruned)[0].mlp.down_proj.bias is not None


def test_flap_prunes_the_same_from_a_scores_file_as_from_calibration(vl_setup, tmp_path):
    """The chain always prunes from its score cache: the file must carry FLAP's calibration means."""
    from mucrasp.scoring.scores_file import load_scores, save_scores

    model, adapter, batches = vl_setup
    components = get_method("flap").components(model, adapter, ScoringContext(0.4, calibration=batches))
    path = save_scores(tmp_path / "flap.scores", components, adapter.architecture, adapter.layer_widths(model))
    loaded, _ = load_scores(path)
    assert set(loaded.per_layer) == {"down_means", "o_proj_means"}
    fresh, reused = copy.deepcopy(model), copy.deepcopy(model)
    prune_in_memory(fresh, adapter, 0.4, method="flap", calibration=batches)
    prune_in_memory(reused, adapter, 0.4, method="flap", scores=loaded)
    for a, b in zip(adapter.decoder_layers(fresh), adapter.decoder_layers(reused)):
        assert b.mlp.down_proj.bias is not None
        torch.testing.assert_close(a.mlp.down_proj.bias, b.mlp.down_proj.bias)
        torch.testing.assert_close(a.self_attn.o_proj.bias, b.self_attn.o_proj.bias)


# ---- hand-computed cases: each baseline follows its reference code ------------------------------------------


def test_flap_standardises_per_layer_squares_attention_and_averages_per_group():
    """FLAP's `standarlization` is per layer (axis 1): layers 10x apart get the same z-scores; o_proj's metric is
    squared, z-scored per channel, then averaged per group."""
    from mucrasp.scoring.flap import flap_unit_metrics

    mlp = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])]
    attn = [torch.tensor([1.0, 1.0, 2.0, 2.0])]  # squared: 1, 1, 4, 4 -> mean 2.5, unbiased std sqrt(3)
    z = flap_unit_metrics(mlp, attn, channels_per_group=2)
    for layer in z.mlp:
        torch.testing.assert_close(layer, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    half = 1.5 / 3**0.5
    torch.testing.assert_close(z.attn[0], torch.tensor([-half, half], dtype=torch.float64))


def test_flap_threshold_is_one_z_score_across_unit_types():
    """Value per parameter is z shifted by one amount for both types: a group with z 0.5 outranks a channel with
    z 0.4 whatever their costs (the reference sorts z and counts parameters)."""
    from mucrasp.params import UnitCosts
    from mucrasp.scoring.flap import threshold_values
    from mucrasp.units import UnitScores

    z = UnitScores([torch.tensor([0.4, -1.0], dtype=torch.float64)], [torch.tensor([0.5, -2.0], dtype=torch.float64)])
    values = threshold_values(z, UnitCosts([3], [50]))
    per_param = torch.cat([values.mlp[0] / 3, values.attn[0] / 50])
    assert per_param.argsort(descending=True).tolist() == [2, 0, 1, 3]
    torch.testing.assert_close(per_param - per_param.min(), torch.tensor([2.4, 1.0, 2.5, 0.0], dtype=torch.float64))


def test_flap_has_no_per_layer_floor():
    from mucrasp.allocation import AllocationConfig, allocate
    from mucrasp.params import UnitCosts
    from mucrasp.units import UnitScores

    values = UnitScores(
        [torch.full((64,), 0.01, dtype=torch.float64), torch.ones(64, dtype=torch.float64)],
        [torch.ones(2, dtype=torch.float64)] * 2,
    )
    costs = UnitCosts([3, 3], [50, 50])
    settings = dict(ratio=0.45, align=8, min_mlp_fraction=0.5, balance_unit_types=False)
    floored = allocate(values, costs, AllocationConfig(**settings)).widths()[0]["mlp_channels"]
    free = allocate(values, costs, AllocationConfig(**settings, per_layer_floor=False)).widths()[0]["mlp_channels"]
    assert (floored, free) == (32, 8)  # the floor keeps half; without it only one aligned block (structural)


def test_ratio_per_layer_skip_ends_hand_case():
    """30 layers of 64 channels (3 params) and 4 groups (50): LLM-Pruner keeps layers 0-3 and 28-29 whole
    (4 and 30 of 32, scaled); at 0.3 the other 24 need 3m+50g <= 245 per layer: r=0.5 -> 32 channels, 2 groups."""
    from mucrasp.allocation import AllocationConfig, allocate, pruned_layer_range
    from mucrasp.params import UnitCosts
    from mucrasp.units import UnitScores

    assert pruned_layer_range(30, skip_ends=True) == range(4, 28)
    assert pruned_layer_range(32, skip_ends=True) == range(4, 30)
    g = torch.Generator().manual_seed(0)
    values = UnitScores(
        [torch.rand(64, generator=g, dtype=torch.float64) for _ in range(30)],
        [torch.rand(4, generator=g, dtype=torch.float64) for _ in range(30)],
    )
    costs = UnitCosts([3] * 30, [50] * 30)
    config = AllocationConfig(ratio=0.3, layout="ratio-per-layer-skip-ends", align=8, balance_unit_types=False)
    plan = allocate(values, costs, config)
    widths = [(w["mlp_channels"], w["kv_groups"]) for w in plan.widths()]
    assert widths == [(64, 4)] * 4 + [(32, 2)] * 24 + [(64, 4)] * 2
    assert plan.layers[5].mlp_channels.tolist() == sorted(values.mlp[5].argsort(descending=True)[:32].tolist())
    # Without skipping, the same budget spreads over all 30 layers: a lower ratio each (48 channels, 3 groups... )
    uniform = allocate(values, costs, config.model_copy(update={"layout": "ratio-per-layer"})).widths()
    assert len({(w["mlp_channels"], w["kv_groups"]) for w in uniform}) == 1
    assert sum(3 * w["mlp_channels"] + 50 * w["kv_groups"] for w in uniform) <= 0.7 * 30 * 392


def test_llm_pruner_takes_one_gradient_over_all_tokens(vl_setup):
    """Reference (`hf_prune.py`): one backward of the mean loss over the whole batch, then Σ_group |w ⊙ g|.
    Checked against autograd on the MLP channels of layer 0; the per-sample variant differs."""
    from mucrasp.calibration.batches import resolve_batches  # noqa: F401  (batches are ready-made here)
    from mucrasp.scoring.taylor_hooks import response_token_losses

    model, adapter, batches = vl_setup
    batches = batches[:2]
    gate, up, down = adapter.mlp_projections(adapter.decoder_layers(model)[0])
    losses, count = [], 0
    for batch in batches:
        token_losses = response_token_losses(model(**batch.inputs).logits, batch.inputs["input_ids"])
        losses.append(token_losses[batch.response_mask].sum())
        count += int(batch.response_mask.sum())
    grads = torch.autograd.grad(sum(losses) / count, [gate.weight, up.weight, down.weight])
    gate_part = (gate.weight * grads[0]).abs().sum(1)
    expected = (gate_part + (up.weight * grads[1]).abs().sum(1) + (down.weight * grads[2]).abs().sum(0)).double()
    method = get_method("llm-pruner")
    batch_scores = method.score(model, adapter, ScoringContext(0.3, calibration=batches)).values.mlp[0]
    # Scores are normalised per unit type (a common scale), so compare the shares of each channel.
    torch.testing.assert_close(batch_scores / batch_scores.sum(), expected / expected.sum(), rtol=1e-4, atol=1e-7)
    context = ScoringContext(0.3, calibration=batches, options={"gradient": "per_sample"})
    per_sample = method.score(model, adapter, context).values.mlp[0]
    assert not torch.allclose(per_sample / per_sample.sum(), batch_scores / batch_scores.sum(), rtol=1e-3)
    assert get_method("llm-pruner").default_layout == "ratio-per-layer-skip-ends"


def test_wanda_sp_prunes_one_ratio_of_heads_and_channels_in_every_layer(vl_setup):
    model, adapter, batches = vl_setup
    outcome = prune_in_memory(copy.deepcopy(model), adapter, 0.3, method="wanda-sp", calibration=batches)
    widths = outcome.plan.widths()
    assert outcome.layout == "ratio-per-layer" and outcome.plan.is_uniform()
    mlp_before, groups_before = outcome.widths_before[0]
    # Hand case, the tiny Qwen2.5-VL: a channel costs 3*128 = 384 parameters, a group 24,704 (q/k/v/o rows and
    # q/k/v biases), a layer 384*384 + 2*24,704 = 196,864, of which 0.7 is 137,805. One ratio r for both types keeps
    # n - floor(2r) groups and floor((1-r) 384) channels, to a multiple of 8: the smallest r that fits is just over
    # 1 - 232/384 (0.396), which keeps both groups and 224 channels.
    assert (mlp_before, groups_before) == (384, 2)
    assert (widths[0]["mlp_channels"], widths[0]["kv_groups"]) == (224, 2)
