"""Recovery by distillation: the loss math, a few steps that lower it, the saved checkpoint, resuming."""

from __future__ import annotations

import json

import pytest
import torch
from calib_helpers import save_processor, write_calibration

from mucrasp import load_pruned
from mucrasp.adapters import adapter_for_config
from mucrasp.calibration import PivotConfig, build_batches, load_processor, load_records
from mucrasp.pruning import PruneConfig, prune
from mucrasp.recovery import (
    RecoverConfig,
    RecoverySettings,
    distil,
    distillation_loss,
    mean_distillation_loss,
    recover,
    state_path_for,
    step_samples,
)
from mucrasp.tiny_models import save_tiny_model

ARCH = "LlamaForCausalLM"


@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    """A tiny dense Llama with a tokenizer, its magnitude-pruned copy at 0.3 and a calibration file."""
    root = tmp_path_factory.mktemp("recovery")
    dense = save_tiny_model(ARCH, root / "dense")
    save_processor(dense, vision=False)
    calib = write_calibration(root / "cal", with_images=False, n=3)
    pruned = root / "pruned"
    prune(PruneConfig(model=dense, out=pruned, ratio=0.3, method="magnitude"))
    return dense, pruned, calib


def _batches(model_dir, calib, config):
    return build_batches(load_records(calib), load_processor(model_dir, False), config, PivotConfig(), vision=False)


def test_distillation_loss_is_temperature_scaled_kl():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.0, 1.0, 0.0]])
    for t in (1.0, 2.0):
        p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
        expected = t * t * float((p * (p / q).log()).sum())
        assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(teacher, teacher, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_step_samples_cover_every_sample_once_per_epoch_and_depend_on_the_seed():
    epoch = [i for step in range(3) for i in step_samples(step, 2, 6, seed=0)]
    assert sorted(epoch) == list(range(6))
    assert step_samples(0, 6, 6, seed=0) != step_samples(0, 6, 6, seed=1)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_few_steps_lower_the_distillation_loss(pruned_pair, lora_rank):
    dense_dir, pruned_dir, calib = pruned_pair
    teacher, student = load_pruned(dense_dir), load_pruned(pruned_dir)
    batches = _batches(dense_dir, calib, teacher.config)
    before = mean_distillation_loss(student, teacher, batches)
    widths = adapter_for_config(student.config).layer_widths(student)
    names = sorted(name for name, _ in student.named_parameters())
    lr = 1e-3 if lora_rank == 0 else 1e-2
    result = distil(student, teacher, batches, RecoverySettings(steps=6, lr=lr, lora_rank=lora_rank, batch_size=3))
    after = mean_distillation_loss(student, teacher, batches)
    assert before > 0 and after < 0.8 * before, (before, after, result.losses)
    # LoRA is merged back: the same parameters, the same widths, no adapter left behind.
    assert sorted(name for name, _ in student.named_parameters()) == names
    assert adapter_for_config(student.config).layer_widths(student) == widths


def test_recover_writes_a_pruned_checkpoint_with_the_same_widths_and_a_record(pruned_pair, tmp_path):
    dense_dir, pruned_dir, calib = pruned_pair
    out = tmp_path / "recovered"
    report = recover(RecoverConfig(pruned=pruned_dir, dense=dense_dir, out=out, calibration=calib, steps=3, lr=1e-3))
    before, after = load_pruned(pruned_dir), load_pruned(out)
    adapter = adapter_for_config(after.config)
    assert adapter.layer_widths(after) == adapter.layer_widths(before)
    assert any(not torch.equal(a, b) for a, b in zip(after.state_dict().values(), before.state_dict().values()))
    manifest = json.loads((out / "pruning.json").read_text())
    recovery = manifest["recovery"]
    assert recovery["steps"] == 3 and len(recovery["losses"]) == 3 and recovery["training"] == "full-parameter"
    assert manifest["kept_units"] == json.loads((pruned_dir / "pruning.json").read_text())["kept_units"]
    assert recovery["losses"] == pytest.approx(report.result.losses, abs=1e-6)
    assert not state_path_for(out).parent.exists()  # the resumable state is removed once the output is written


def test_an_interrupted_recovery_resumes_where_it_stopped_and_ends_where_an_uninterrupted_one_does(
    pruned_pair, tmp_path
):
    dense_dir, pruned_dir, calib = pruned_pair
    settings = dict(pruned=pruned_dir, dense=dense_dir, calibration=calib, steps=5, lr=1e-3, batch_size=2)
    whole = recover(RecoverConfig(out=tmp_path / "whole", checkpoint_every=2, **settings))

    def stop_after_three(description, done, total):
        if description == "distilling" and done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        recover(RecoverConfig(out=out, checkpoint_every=2, **settings), progress=stop_after_three)
    assert not out.exists() and state_path_for(out).is_file()  # nothing half-written, the state of step 2 kept
    resumed = recover(RecoverConfig(out=out, checkpoint_every=2, **settings))
    assert resumed.result.resumed_from == 2
    assert resumed.result.losses == pytest.approx(whole.result.losses, rel=1e-5)
    a, b = load_pruned(tmp_path / "whole").state_dict(), load_pruned(out).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert json.loads((out / "pruning.json").read_text())["recovery"]["resumed_from_step"] == 2


def test_recover_cli_bad_input_is_one_error_line_and_starts_without_torch(pruned_pair, tmp_path):
    import subprocess
    import sys

    dense_dir, _, _ = pruned_pair
    check = (
        "import sys\nfrom mucrasp.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    print('EXIT', exc.code, file=sys.stderr)\n"
        "print('HEAVY', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    base = [sys.executable, "-c", check, "recover"]
    # A bad option fails in the config model, before torch is imported.
    run = subprocess.run([*base, "p", "--dense", "d", "--out", "o", "--steps", "0"], capture_output=True, text=True)
    assert "EXIT 2" in run.stderr and "HEAVY False" in run.stderr and "error:" in run.stderr
    # A dense model given as the pruned one: one line naming it, no traceback.
    run = subprocess.run(
        [*base, str(dense_dir), "--dense", str(dense_dir), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert "EXIT 2" in run.stderr and "not a pruned checkpoint" in run.stderr and "Traceback" not in run.stderr
