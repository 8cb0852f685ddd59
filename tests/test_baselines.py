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
