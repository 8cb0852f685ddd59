"""MuCRASP scoring: the hook-based Taylor pass, modality statistics, fusion, and the scores file."""

import copy

import pytest
import torch
from calib_helpers import tiny_vl_calibration, write_calibration

from mucrasp.calibration import CalibrationSource, PivotConfig
from mucrasp.errors import MucraspError
from mucrasp.pruning import prune_in_memory
from mucrasp.scoring import ScoringContext, get_method
from mucrasp.scoring.modality import ModalityStatistics, ProtectionConfig, protection, record_hidden_states
from mucrasp.scoring.mucrasp_method import PAPER_STYLE, MucraspConfig, gamma_dyn
from mucrasp.scoring.scores_file import load_scores, save_scores
from mucrasp.scoring.taylor_hooks import response_token_losses, taylor_scores


@pytest.fixture(scope="module")
def vl_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vl")
    return (*tiny_vl_calibration(folder), folder)


def full_grad_scores(model, adapter, batches, select):
    """Reference: plain backward into full .grad tensors, then |Σ w·g| per unit."""
    head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
    mlp_total = [0] * len(adapter.decoder_layers(model))
    attn_total = [0] * len(mlp_total)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        logits = model(**batch.inputs, use_cache=False).logits
        response_token_losses(logits, batch.input_ids)[select(batch)].mean().backward()
        for i, layer in enumerate(adapter.decoder_layers(model)):
            gate, up, down = adapter.mlp_projections(layer)
            wg = lambda lin: lin.weight.double() * lin.weight.grad.double()  # noqa: E731
            mlp = wg(gate).sum(1) + wg(up).sum(1) + wg(down).sum(0)
            q, k, v, o = adapter.attention_projections(layer)
            bias = lambda lin: (lin.bias.double() * lin.bias.grad.double()) if lin.bias is not None else 0  # noqa: E731
            q_rows = wg(q).sum(1) + bias(q) + wg(o).sum(0)
            kv_rows = wg(k).sum(1) + bias(k) + wg(v).sum(1) + bias(v)
            attn = q_rows.reshape(-1, group * head_dim).sum(1) + kv_rows.reshape(-1, head_dim).sum(1)
            mlp_total[i] = mlp_total[i] + mlp.abs()
            attn_total[i] = attn_total[i] + attn.abs()
    model.zero_grad(set_to_none=True)
    return mlp_total, attn_total


def test_hook_taylor_equals_full_grad(vl_setup):
    model, adapter, batches, _ = vl_setup
    hooked, memory = taylor_scores(
        model, adapter, batches, {"a_global": lambda b: b.response_mask, "a_pivot": lambda b: b.pivot_mask}
    )
    assert "peak_rss_mib" in memory
    assert all(p.grad is None for p in model.parameters())
    for key, select in (("a_global", lambda b: b.response_mask), ("a_pivot", lambda b: b.pivot_mask)):
        mlp, attn = full_grad_scores(model, adapter, batches, select)
        for got, want in zip(hooked[key].mlp + hooked[key].attn, mlp + attn):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_hooks_never_leave_gradients_and_restore_requires_grad(vl_setup):
    model, adapter, batches, _ = vl_setup
    layer = adapter.decoder_layers(model)[0]
    for elementwise in (False, True):
        seen = []
        weight = layer.mlp.down_proj.weight
        handle = weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad is not None))
        try:
            scores, _ = taylor_scores(model, adapter, batches[:1], {"g": lambda b: b.response_mask}, elementwise)
        finally:
            handle.remove()
        assert float(scores["g"].mlp[0].abs().sum()) > 0  # the pass did attribute something to the layer
        # The unit form reads activation gradients only: no weight gradient is ever computed. The element-wise
        # form needs them; they reach the projection while the pass runs and are dropped at once.
        assert seen == [] if not elementwise else (seen and all(seen)), (elementwise, seen)
        assert all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_scores(vl_setup):
    model, adapter, batches, _ = vl_setup
    plain, _ = taylor_scores(model, adapter, batches[:1], {"g": lambda b: b.response_mask})
    ckpt, _ = taylor_scores(model, adapter, batches[:1], {"g": lambda b: b.response_mask}, checkpointing=True)
    for a, b in zip(plain["g"].mlp + plain["g"].attn, ckpt["g"].mlp + ckpt["g"].attn):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert not model.training


def modality_stats(model, adapter, batches):
    stats = ModalityStatistics(len(adapter.decoder_layers(model)), adapter.text_config(model.config).hidden_size)
    with torch.no_grad(), record_hidden_states(model, adapter, stats):
        for batch in batches:
            stats.start_sample(batch)
            model(**batch.inputs)
    return stats


def test_cmds_zero_for_text_only_and_positive_with_images(vl_setup, tmp_path):
    model, adapter, batches, folder = vl_setup
    with_images = modality_stats(model, adapter, batches)
    assert bool((with_images.cmds() > 0).all()) and bool((with_images.sens() > 0).all())
    text_only = CalibrationSource(write_calibration(tmp_path, with_images=False), folder).batches(
        model.config, PivotConfig(), vision=True
    )
    stats = modality_stats(model, adapter, text_only)
    assert bool((stats.cmds() == 0).all()) and bool((stats.sens() > 0).all())


def test_protection_and_gamma():
    prot = protection(
        torch.tensor([1.0, 2.0, 3.0]),
        torch.zeros(3),
        ProtectionConfig(alpha=1, beta=1, omega_early=0.2, omega_attention=0.1),
    )
    torch.testing.assert_close(prot["mlp"], torch.tensor([1.2, 1.6, 2.0], dtype=torch.float64))
    torch.testing.assert_close(prot["attn"], prot["mlp"] + 0.1)
    assert gamma_dyn(0.3, MucraspConfig(**PAPER_STYLE)) == pytest.approx(0.35)
    assert gamma_dyn(0.3, MucraspConfig()) == pytest.approx(0.35)  # default: the paper's fusion
    assert MucraspConfig().protection() == ProtectionConfig(0.0, 0.0, 0.0, 0.0)  # default: P(L) = 1
    assert gamma_dyn(0.5, MucraspConfig(gamma_base=0.4, rho=2)) == pytest.approx(0.1)


def test_scores_file_round_trip_gives_the_same_keep_masks(vl_setup, tmp_path):
    model, adapter, batches, _ = vl_setup
    method = get_method("mucrasp")
    components = method.components(model, adapter, ScoringContext(ratio=0.0, calibration=batches))
    assert components.details["calibration"]["pivot_fraction"] > 0
    path = save_scores(tmp_path / "s.safetensors", components, adapter.architecture, adapter.layer_widths(model))
    loaded, stored = load_scores(path)
    assert stored["layer_widths"] == adapter.layer_widths(model)
    for ratio in (0.2, 0.4):
        fresh = prune_in_memory(copy.deepcopy(model), adapter, ratio, method="mucrasp", calibration=batches, align=8)
        reused = prune_in_memory(copy.deepcopy(model), adapter, ratio, method="mucrasp", scores=loaded, align=8)
        assert fresh.plan.to_json() == reused.plan.to_json()
        assert abs(fresh.ratio_achieved - ratio) < 0.1


def test_set_options_go_through_pydantic_coercion():
    from mucrasp.scoring.options import parse_assignments

    got = parse_assignments(
        MucraspConfig, ["window=16", "markers=Thus, So", "gradient_checkpointing=yes", "gamma-base=0.25"], "mucrasp"
    )
    assert got == {"window": 16, "markers": ("Thus", "So"), "gradient_checkpointing": True, "gamma_base": 0.25}
    assert parse_assignments(MucraspConfig, ['markers=["A, B", "C"]'], "mucrasp") == {"markers": ("A, B", "C")}
    with pytest.raises(
        MucraspError, match=r"^method 'mucrasp': window: Input should be greater than or equal to 1 \(got '-4'\)$"
    ):
        parse_assignments(MucraspConfig, ["window=-4"], "mucrasp")
    with pytest.raises(
        MucraspError, match=r"^method 'mucrasp': gradient_checkpointing: Input should be a valid boolean"
    ):
        parse_assignments(MucraspConfig, ["gradient_checkpointing=maybe"], "mucrasp")
    with pytest.raises(MucraspError, match=r"^windw: method 'mucrasp' has no such option \(known: .*window"):
        parse_assignments(MucraspConfig, ["windw=3"], "mucrasp")
    with pytest.raises(MucraspError, match="takes no options"):
        parse_assignments(None, ["window=3"], "magnitude")


def test_flatten_depth_profile_equalises_layer_means_and_keeps_the_order_inside_a_layer():
    from mucrasp.scoring.base import flatten_depth_profile
    from mucrasp.units import UnitScores

    # Layer 1's values are 10× layer 0's: a global knapsack would strip layer 0 first.
    scores = UnitScores(
        [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])], [torch.ones(2), torch.ones(2)]
    )
    assert flatten_depth_profile(scores, 0.0) is scores
    flat = flatten_depth_profile(scores, 1.0)
    overall = torch.cat(scores.mlp).double().mean()
    for layer in flat.mlp:
        torch.testing.assert_close(layer.mean(), overall)
    for before, after in zip(scores.mlp, flat.mlp):
        assert torch.equal(before.argsort(), after.argsort())
    half = flatten_depth_profile(scores, 0.5)
    ratio = [float(layer.mean()) for layer in half.mlp]
    assert ratio[1] / ratio[0] == pytest.approx(10**0.5)  # half the log-gap between the layers stays
    torch.testing.assert_close(half.attn[0], torch.ones(2, dtype=torch.float64))


def test_mucrasp_prunes_every_layer_within_its_deviation_of_the_ratio(vl_setup):
    from mucrasp.params import unit_costs

    model, adapter, batches, _ = vl_setup
    costs = unit_costs(model, adapter)
    ratio, deviation = 0.5, 0.05
    outcome = prune_in_memory(
        copy.deepcopy(model), adapter, ratio, method="mucrasp", calibration=batches, layer_deviation=deviation
    )
    assert outcome.layout == get_method("mucrasp").default_layout == "global-bounded"
    for (mlp, groups), after, c_mlp, c_attn in zip(
        outcome.widths_before, outcome.plan.widths(), costs.mlp_channel, costs.attn_group
    ):
        total = mlp * c_mlp + groups * c_attn
        pruned = 1 - (after["mlp_channels"] * c_mlp + after["kv_groups"] * c_attn) / total
        # The floor on kept parameters is met without overshooting it: at most one block (a GQA group) short.
        assert ratio - deviation - 1e-9 <= pruned <= ratio + deviation + max(8 * c_mlp, c_attn) / total
    assert abs(outcome.ratio_achieved - ratio) < 0.05
