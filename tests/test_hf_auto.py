"""Per-layer checkpoints load with the Hugging Face Auto classes (`trust_remote_code=True`), without mucrasp.

`save_pruned` writes `modeling_mucrasp.py` and config.json's `auto_map` (export/hf_remote_code.py). Every
load here runs in a fresh interpreter in which importing `mucrasp` raises (as where it is not
installed), and its logits must equal `mucrasp.load_pruned`'s, fp32. Then lm-eval's `hf` model
evaluates a per-layer checkpoint on a local task, and its per-item log-likelihoods and accuracy must be
what the model's own logits give.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import export_helpers as h
import pytest
import torch
from conftest import ARCHITECTURES

from mucrasp import load_pruned
from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import LAYER_INTERMEDIATE_SIZES, OUTPUT_PROJECTION_BIAS
from mucrasp.export.hf_remote_code import FILE_NAME
from mucrasp.export.vllm_checkpoint import export_vllm

ATOL = 1e-5

# Run first in every child: `import mucrasp` fails there, as on a machine without it.
_NO_MUCRASP = r"""
import sys


class _NoMucrasp:
    def find_spec(self, name, path=None, target=None):
        if name == "mucrasp" or name.startswith("mucrasp."):
            raise ImportError(f"{name} is not installed here")
        return None


sys.meta_path.insert(0, _NoMucrasp())
"""

# One child loads every checkpoint of this module: an interpreter start with torch and transformers costs
# more than the loads themselves.
_LOAD_AND_RUN = r"""
import json
import torch
import transformers

for job in json.loads(open(sys.argv[1]).read()):
    model = getattr(transformers, job["auto_class"]).from_pretrained(
        job["model_dir"], trust_remote_code=True, dtype=torch.float32
    )
    with torch.no_grad():
        logits = model.eval()(**torch.load(job["inputs"])).logits
    torch.save({"logits": logits, "class": type(model).__name__, "module": type(model).__module__}, job["out"])
print(json.dumps({"mucrasp_modules": sorted(m for m in sys.modules if m.split(".")[0] == "mucrasp")}))
"""

_LM_EVAL = r"""
import json
import lm_eval
from lm_eval.tasks import TaskManager

model_dir, task_dir, out_path = sys.argv[1:4]
results = lm_eval.simple_evaluate(
    model="hf",
    model_args=f"pretrained={model_dir},trust_remote_code=True,dtype=float32,device=cpu",
    tasks=["mucrasp_tiny_mc"],
    task_manager=TaskManager(include_path=task_dir),
    batch_size=1,
    log_samples=True,
)
samples = sorted(results["samples"]["mucrasp_tiny_mc"], key=lambda s: s["doc_id"])
with open(out_path, "w") as f:
    json.dump(
        {
            "acc": results["results"]["mucrasp_tiny_mc"]["acc,none"],
            "loglikelihoods": [[float(r[0][0]) for r in s["resps"]] for s in samples],
            "remote_modules": sorted(m for m in sys.modules if m.endswith(".modeling_mucrasp")),
            "mucrasp_modules": sorted(m for m in sys.modules if m.split(".")[0] == "mucrasp"),
        },
        f,
    )
"""


def _run_fresh(tmp_path: Path, script: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """`script` in a new interpreter: no mucrasp, no hub, caches (remote-code modules too) under tmp_path."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _NO_MUCRASP + script, *map(str, args)],
        cwd=tmp_path,  # not the repository root, whose `mucrasp/` folder would be importable
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc


def _image_inputs(model_dir: Path) -> dict:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    chat = processor.tokenizer.apply_chat_template(
        h.image_chat("how many red squares"), add_generation_prompt=True, tokenize=False
    )
    return dict(processor(text=[chat], images=[h.test_image(0)], return_tensors="pt"))


# case -> (architecture, o_proj/down_proj biases as FLAP's bias compensation adds them)
CASES = {
    "llama": ("LlamaForCausalLM", False),
    "llama-flap-bias": ("LlamaForCausalLM", True),
    "qwen25vl-image": ("Qwen2_5_VLForConditionalGeneration", False),
}
for _arch in ARCHITECTURES:  # every other family (Qwen2's q/k/v biases, Qwen3's q_norm/k_norm, ...) with FLAP biases
    if _arch not in {a for a, _ in CASES.values()}:
        CASES[f"{_arch}-flap-bias"] = (_arch, True)
VLLM_EXPORT_CASE = "qwen25vl-vllm-export"


def _inputs_for(model_dir: Path, adapter) -> dict:
    if adapter.is_vision_language:
        inputs = _image_inputs(model_dir)
        assert (inputs["input_ids"] == h.IMAGE_TOKEN_ID).sum() == 4
        return inputs
    return {"input_ids": torch.tensor([[1, 5, 9, 33, 2, 7, 300, 41, 17, 17, 4, 250]])}


@pytest.fixture(scope="module")
def auto_loads(tmp_path_factory) -> dict:
    """Every case's checkpoint, its mucrasp logits, and what one mucrasp-free child loaded from it."""
    root = tmp_path_factory.mktemp("hf-auto")
    cases, jobs = {}, []
    for case, (architecture, output_bias) in CASES.items():
        adapter = get_adapter(architecture)
        model_dir = root / f"pruned-{case}"  # remote-code modules are cached by folder name
        h.make_pruned_checkpoint(architecture, model_dir, h.per_layer_plan(), output_bias=output_bias)
        cases[case] = {"model_dir": model_dir, "reference": load_pruned(model_dir), "adapter": adapter}
    architecture = "Qwen2_5_VLForConditionalGeneration"
    h.make_pruned_checkpoint(architecture, root / "pruned-for-vllm", h.per_layer_plan())
    exported = export_vllm(root / "pruned-for-vllm", root / "served").out
    cases[VLLM_EXPORT_CASE] = {
        "model_dir": exported,
        "reference": load_pruned(root / "pruned-for-vllm"),
        "adapter": get_adapter(architecture),
    }
    for case, entry in cases.items():
        inputs = _inputs_for(entry["model_dir"], entry["adapter"])
        with torch.no_grad():
            entry["expected"] = entry["reference"](**inputs).logits
        torch.save(inputs, root / f"{case}.inputs.pt")
        auto_class = entry["adapter"].hf_auto_class
        jobs.append(
            {
                "model_dir": str(entry["model_dir"]),
                "auto_class": auto_class,
                "inputs": str(root / f"{case}.inputs.pt"),
                "out": str(root / f"{case}.out.pt"),
            }
        )
    (root / "jobs.json").write_text(json.dumps(jobs))
    proc = _run_fresh(root, _LOAD_AND_RUN, root / "jobs.json")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["mucrasp_modules"] == []
    for case, entry in cases.items():
        entry["loaded"] = torch.load(root / f"{case}.out.pt")
    return cases


@pytest.mark.parametrize("case", list(CASES))
def test_auto_class_loads_a_per_layer_checkpoint_without_mucrasp(case, auto_loads):
    architecture, output_bias = CASES[case]
    entry = auto_loads[case]
    config = json.loads((entry["model_dir"] / "config.json").read_text())
    text = config.get("text_config", config)
    assert text[LAYER_INTERMEDIATE_SIZES] == [192, 320, 96]
    assert text.get(OUTPUT_PROJECTION_BIAS, False) == output_bias
    assert (entry["model_dir"] / FILE_NAME).is_file()
    assert config["auto_map"] == {entry["adapter"].hf_auto_class: f"modeling_mucrasp.Mucrasp{architecture}"}
    loaded = entry["loaded"]
    assert loaded["class"] == f"Mucrasp{architecture}"
    assert loaded["module"].startswith("transformers_modules.")
    torch.testing.assert_close(loaded["logits"], entry["expected"], atol=ATOL, rtol=0)


def test_uniform_checkpoint_stays_stock(tmp_path):
    h.make_pruned_checkpoint("LlamaForCausalLM", tmp_path / "uniform", h.uniform_plan())
    config = json.loads((tmp_path / "uniform" / "config.json").read_text())
    assert "auto_map" not in config and LAYER_INTERMEDIATE_SIZES not in config
    assert not (tmp_path / "uniform" / FILE_NAME).exists()


def test_vllm_export_keeps_the_auto_map_and_still_loads(auto_loads):
    entry = auto_loads[VLLM_EXPORT_CASE]
    config = json.loads((entry["model_dir"] / "config.json").read_text())
    architecture = "Qwen2_5_VLForConditionalGeneration"
    assert config["architectures"] == [f"Mucrasp{architecture}"]  # what vLLM's plugin serves
    assert config["model_type"] == "qwen2_5_vl"  # stock: vLLM parses the config without remote code
    assert config["auto_map"] == {"AutoModelForImageTextToText": f"modeling_mucrasp.Mucrasp{architecture}"}
    torch.testing.assert_close(entry["loaded"]["logits"], entry["expected"], atol=ATOL, rtol=0)


# ---- lm-eval: its `hf` model on a local multiple-choice task -------------------------------------------
QUESTIONS = [
    ("how many red squares", ["one", "two", "three"], 1),
    ("what color is the circle", ["red", "blue", "green"], 2),
    ("where is the square", ["left", "right", "top", "bottom"], 0),
    ("is the blue shape small or large", ["small", "large"], 1),
    ("count the small circle", ["zero", "one", "two", "four"], 3),
    ("which shape is large", ["square", "circle"], 0),
]


def _write_task(task_dir: Path) -> None:
    task_dir.mkdir()
    data = task_dir / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "label": label}) + "\n" for q, c, label in QUESTIONS)
    )
    (task_dir / "mucrasp_tiny_mc.yaml").write_text(
        "task: mucrasp_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}} answer"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def _own_loglikelihoods(model, tokenizer) -> list[list[float]]:
    """log P(" " + choice | question) from the model's logits: the continuation's tokens, summed."""
    out = []
    for question, choices, _ in QUESTIONS:
        context = tokenizer(f"{question} answer", add_special_tokens=False)["input_ids"]
        row = []
        for choice in choices:
            whole = tokenizer(f"{question} answer {choice}", add_special_tokens=False)["input_ids"]
            assert whole[: len(context)] == context and tokenizer.unk_token_id not in whole
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            row.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        out.append(row)
    return out


def test_lm_eval_hf_model_evaluates_a_per_layer_checkpoint(tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "pruned-llama-lm-eval"
    h.make_pruned_checkpoint("LlamaForCausalLM", model_dir, h.per_layer_plan(), output_bias=True)
    _write_task(tmp_path / "tasks")
    _run_fresh(tmp_path, _LM_EVAL, model_dir, tmp_path / "tasks", tmp_path / "lm_eval.json")
    result = json.loads((tmp_path / "lm_eval.json").read_text())
    assert result["mucrasp_modules"] == [] and len(result["remote_modules"]) == 1

    own = _own_loglikelihoods(load_pruned(model_dir), AutoTokenizer.from_pretrained(model_dir))
    assert [len(row) for row in result["loglikelihoods"]] == [len(c) for _, c, _ in QUESTIONS]
    for theirs, ours in zip(result["loglikelihoods"], own):
        assert theirs == pytest.approx(ours, abs=1e-4)
    acc = sum(max(range(len(row)), key=row.__getitem__) == label for row, (_, _, label) in zip(own, QUESTIONS))
    assert result["acc"] == pytest.approx(acc / len(QUESTIONS))
