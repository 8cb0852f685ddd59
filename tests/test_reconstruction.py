"""One-shot reconstruction (`--reconstruct`): the refit is exact when the removed units are linear
combinations of the kept ones, and it runs through the prune path for every method."""

import copy

import pytest
import torch

from mucrasp.adapters import get_adapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.reconstruction import ReconstructionSettings, slice_and_reconstruct
from mucrasp.slicing import slice_model
from mucrasp.tiny_models import build_tiny_model
from mucrasp.units import KeepPlan, LayerKeep

ARCH = "LlamaForCausalLM"
KEPT_CHANNELS = 256  # of 384: channels 256.. are scaled copies of channels 0..


def _batches(n=4, length=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 500, (1, length), generator=generator)
        mask = torch.ones(length, dtype=torch.bool)
        out.append(CalibrationBatch({"input_ids": ids}, mask, ~mask, ~mask, mask))
    return out


def _redundant_model():
    """A tiny Llama (fp64) whose removed units are exact linear combinations of kept ones: MLP channel
    256+k computes 0.7x channel k's activation, and KV group 1 duplicates group 0 (same q/k/v rows)."""
    model = build_tiny_model(ARCH).double()
    adapter = get_adapter(ARCH)
    head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            gate, up, _ = adapter.mlp_projections(layer)
            copies = gate.out_features - KEPT_CHANNELS
            gate.weight[KEPT_CHANNELS:] = gate.weight[:copies]
            up.weight[KEPT_CHANNELS:] = 0.7 * up.weight[:copies]
            q_proj, k_proj, v_proj, _ = adapter.attention_projections(layer)
            q_rows = group * head_dim
            q_proj.weight[q_rows : 2 * q_rows] = q_proj.weight[:q_rows]
            k_proj.weight[head_dim : 2 * head_dim] = k_proj.weight[:head_dim]
            v_proj.weight[head_dim : 2 * head_dim] = v_proj.weight[:head_dim]
    plan = KeepPlan([LayerKeep(torch.arange(KEPT_CHANNELS), torch.tensor([0])) for _ in adapter.decoder_layers(model)])
    return model, adapter, plan


def _hidden(model, batches):
    with torch.no_grad():
        return [model(**b.inputs, output_hidden_states=True).hidden_states for b in batches]


def test_refit_reproduces_the_dense_layer_outputs_when_removed_units_are_redundant():
    model, adapter, plan = _redundant_model()
    batches = _batches()
    dense = _hidden(model, batches)
    plain = slice_model(copy.deepcopy(model), adapter, plan)
    refit = copy.deepcopy(model)
    summary = slice_and_reconstruct(refit, adapter, plan, batches, ReconstructionSettings(ridge=0.0))
    assert [w["mlp_channels"] for w in plan.widths()] == [
        layer.mlp.down_proj.in_features for layer in refit.model.layers
    ]
    for got, want, naive in zip(_hidden(refit, batches), dense, _hidden(plain, batches)):
        for layer_out, dense_out in zip(got[1:], want[1:]):
            torch.testing.assert_close(layer_out, dense_out, atol=1e-5, rtol=0)
        # Plain slicing loses what the copies carried: the test could fail.
        assert float((naive[-1] - want[-1]).abs().max()) > 1e-2
    assert all(e["after"] < 1e-6 < e["before"] for e in summary["layer_output_error"])


def test_refit_lowers_every_layers_output_error_on_random_weights():
    """No redundancy: the default ridge fit still lowers each layer's calibration output error."""
    model = build_tiny_model(ARCH)
    adapter = get_adapter(ARCH)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.tensor([1])) for _ in adapter.decoder_layers(model)])
    summary = slice_and_reconstruct(model, adapter, plan, _batches(8, 96, seed=1))
    assert all(e["after"] < 0.9 * e["before"] for e in summary["layer_output_error"])
    assert model.model.layers[0].mlp.down_proj.bias is not None


def test_accelerator_accumulation_in_fp32_gives_the_cpu_fp64_refit(monkeypatch):
    """On CUDA the normal equations are summed in fp32 where the activations are (`accumulation_dtype`);
    forced onto the CPU here, that path must give the fp64 refit at the default ridge."""
    import mucrasp.reconstruction as reconstruction

    assert reconstruction.accumulation_dtype(torch.device("cpu")) == torch.float64
    assert reconstruction.accumulation_dtype(torch.device("cuda", 0)) == torch.float32
    model = build_tiny_model(ARCH)
    adapter = get_adapter(ARCH)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.tensor([1])) for _ in adapter.decoder_layers(model)])
    refits = {}
    for dtype in (torch.float64, torch.float32):
        monkeypatch.setattr(reconstruction, "accumulation_dtype", lambda device, dtype=dtype: dtype)
        refit = copy.deepcopy(model)
        slice_and_reconstruct(refit, adapter, plan, _batches(8, 96, seed=1))
        refits[dtype] = [layer.mlp.down_proj.weight.detach() for layer in refit.model.layers]
    unfitted = slice_model(copy.deepcopy(model), adapter, plan).model.layers[-1].mlp.down_proj.weight.detach()
    for fp32, fp64 in zip(refits[torch.float32], refits[torch.float64]):
        torch.testing.assert_close(fp32, fp64, atol=1e-5, rtol=1e-4)
    assert float((refits[torch.float64][-1] - unfitted).abs().max()) > 1e-3  # the refit did change the weights


def test_a_large_ridge_toward_the_pruned_weights_keeps_them_and_toward_zero_does_not():
    """shrink_toward="pruned": λ → ∞ returns the sliced weights (the intercept, unregularised, still fits)."""
    model = build_tiny_model(ARCH)
    adapter = get_adapter(ARCH)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.tensor([1])) for _ in adapter.decoder_layers(model)])
    sliced = slice_model(copy.deepcopy(model), adapter, plan).model.layers[0].mlp.down_proj.weight.detach()
    refits = {}
    for toward in ("pruned", "zero"):
        refit = copy.deepcopy(model)
        settings = ReconstructionSettings(ridge=1e8, shrink_toward=toward)
        summary = slice_and_reconstruct(refit, adapter, plan, _batches(4, 64, seed=3), settings)
        assert summary["shrink_toward"] == toward
        refits[toward] = refit.model.layers[0].mlp.down_proj.weight.detach()
    torch.testing.assert_close(refits["pruned"], sliced, atol=1e-5, rtol=0)
    assert float(refits["zero"].abs().max()) < 1e-3 < float(sliced.abs().max())


def test_reconstruction_runs_on_a_vision_language_model(tmp_path):
    from calib_helpers import tiny_vl_calibration

    from mucrasp.pruning import prune_in_memory

    model, adapter, batches = tiny_vl_calibration(tmp_path)
    outcome = prune_in_memory(model, adapter, 0.3, method="wanda-sp", calibration=batches, reconstruct=True)
    errors = outcome.scoring.details["reconstruction"]["layer_output_error"]
    assert len(errors) == len(adapter.decoder_layers(model)) and all(e["after"] <= e["before"] for e in errors)
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0].inputs).logits).all()


@pytest.mark.parametrize("method", ["magnitude", "flap"])
def test_every_method_can_reconstruct_through_prune_in_memory(method):
    from mucrasp.pruning import prune_in_memory

    model = build_tiny_model(ARCH)
    adapter = get_adapter(ARCH)
    batches = _batches(4, 64)
    outcome = prune_in_memory(model, adapter, 0.3, method=method, calibration=batches, reconstruct=True)
    assert outcome.scoring.details["reconstruction"]["ridge"] == ReconstructionSettings().ridge
    assert 0.3 <= outcome.ratio_achieved < 0.4
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0].inputs).logits).all()


def test_prune_cli_reconstruct_writes_a_checkpoint_that_reloads(tmp_path):
    import json

    from calib_helpers import save_processor, write_calibration
    from typer.testing import CliRunner

    from mucrasp import load_pruned
    from mucrasp.cli import app
    from mucrasp.errors import MucraspError
    from mucrasp.tiny_models import save_tiny_model

    source = save_tiny_model("Qwen2_5_VLForConditionalGeneration", tmp_path / "dense")
    save_processor(source)
    calib = write_calibration(tmp_path / "cal")
    out = tmp_path / "pruned"
    args = ["prune", str(source), "--ratio", "0.3", "--method", "magnitude", "--out", str(out), "--reconstruct"]
    missing = CliRunner().invoke(app, args)
    # `app` raises; the console script's main() turns a MucraspError into one `error:` line.
    assert isinstance(missing.exception, MucraspError) and "--reconstruct needs calibration" in str(missing.exception)
    result = CliRunner().invoke(app, [*args, "--calib", str(calib)])
    assert result.exit_code == 0, result.output
    details = json.loads((out / "pruning.json").read_text())["scoring_details"]["reconstruction"]
    assert details["samples"] == 3 and len(details["layer_output_error"]) == 3
    model = load_pruned(out)
    assert model.model.language_model.layers[0].mlp.down_proj.bias is not None
