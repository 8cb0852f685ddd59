"""Per-layer checkpoints that the Hugging Face Auto classes load on their own, without mucrasp installed.

The DeciLM / Nemotron-NAS convention: `save_pruned` writes a small module, `modeling_mucrasp.py`, next
to the weights of a per-layer checkpoint, and names its class in config.json's `auto_map`, so that

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)          # text families
    AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)   # vision-language families

build it (so do lm-eval's `hf` model and anything else built on them). The module needs only torch
and transformers. Its class subclasses the family's own transformers class (it copies no model code):
`__init__` builds the stock model at the config's global sizes, then replaces each decoder layer's
q/k/v/o and gate/up/down projections by ones of that layer's recorded widths, as
`mucrasp.checkpoint.load_pruned` does, and `from_pretrained` loads the weights into those shapes.
The source is one template for every family; the adapter supplies the few names it needs
(`ArchitectureAdapter.hf_remote_code_names`: the stock class, the Auto class, where the decoder
layers and the text config are, which attention attributes cache head counts).

Only the model class is remote code. The config keeps its stock `model_type` and class (no
`AutoConfig` entry in `auto_map`): vLLM parses config.json with `AutoConfig` and
`trust_remote_code=False`, so an unknown model type, or an `AutoConfig` entry, would make
`vllm serve DIR` ask for `--trust-remote-code`; transformers also keys its weight renaming
(the Qwen-VL legacy key names) on the model type. Without `trust_remote_code` the Auto classes
pick the stock class, which refuses the weights with a shape error, as before.
"""

from __future__ import annotations

import json
from pathlib import Path

MODULE_NAME = "modeling_mucrasp"
FILE_NAME = MODULE_NAME + ".py"

_TEMPLATE = '''\
"""Loads this per-layer pruned checkpoint (written by mucrasp-deploy) with the transformers Auto classes.

Each decoder layer has its own MLP width and KV-head count, recorded in the text config as
`layer_intermediate_sizes` and `layer_num_key_value_heads`. The class below is the stock transformers
class whose decoder layers are resized to those widths after the stock model is built; it needs
only torch and transformers. Load it with `trust_remote_code=True`.
"""

import torch
import transformers

LAYER_INTERMEDIATE_SIZES = "layer_intermediate_sizes"
LAYER_NUM_KV_HEADS = "layer_num_key_value_heads"
OUTPUT_PROJECTION_BIAS = "output_projection_bias"


def _attribute(obj, path):
    for name in filter(None, path.split(".")):
        obj = getattr(obj, name)
    return obj


def _linear(like, in_features, out_features, bias):
    return torch.nn.Linear(in_features, out_features, bias=bias, device=like.weight.device, dtype=like.weight.dtype)


def resize_decoder_layers(model, config, layers_path, text_config_path, head_attributes, kv_head_attributes):
    """Give every decoder layer the widths the config records for it (no-op for a uniform config)."""
    text = _attribute(config, text_config_path)
    mlp = getattr(text, LAYER_INTERMEDIATE_SIZES, None)
    kv = getattr(text, LAYER_NUM_KV_HEADS, None)
    if mlp is None and kv is None:
        return
    layers = _attribute(model, layers_path)
    if mlp is None or kv is None or not len(mlp) == len(kv) == len(layers):
        raise ValueError(
            f"config has inconsistent per-layer widths ({LAYER_INTERMEDIATE_SIZES}, {LAYER_NUM_KV_HEADS}) "
            f"for {len(layers)} decoder layers"
        )
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    group = text.num_attention_heads // text.num_key_value_heads
    output_bias = bool(getattr(text, OUTPUT_PROJECTION_BIAS, False))
    for layer, channels, groups in zip(layers, mlp, kv):
        feed = layer.mlp
        gate, up, down = feed.gate_proj, feed.up_proj, feed.down_proj
        feed.gate_proj = _linear(gate, gate.in_features, channels, gate.bias is not None)
        feed.up_proj = _linear(up, up.in_features, channels, up.bias is not None)
        feed.down_proj = _linear(down, channels, down.out_features, down.bias is not None or output_bias)
        if hasattr(feed, "intermediate_size"):
            feed.intermediate_size = channels
        attn = layer.self_attn
        q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        q_rows, kv_rows = groups * group * head_dim, groups * head_dim
        attn.q_proj = _linear(q, q.in_features, q_rows, q.bias is not None)
        attn.k_proj = _linear(k, k.in_features, kv_rows, k.bias is not None)
        attn.v_proj = _linear(v, v.in_features, kv_rows, v.bias is not None)
        attn.o_proj = _linear(o, q_rows, o.out_features, o.bias is not None or output_bias)
        for name in head_attributes:
            if hasattr(attn, name):
                setattr(attn, name, groups * group)
        for name in kv_head_attributes:
            if hasattr(attn, name):
                setattr(attn, name, groups)


def share_checkpoint_conversion(cls, base):
    """Give `cls` the key renaming transformers applies when `base` loads a checkpoint (Qwen-VL checkpoints
    store the decoder as `model.layers.*`, the module is `model.language_model.layers.*`): transformers
    skips its renaming for custom code unless a mapping is registered under the custom class's name."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # a transformers without checkpoint conversion: nothing to share
        return
    mapping = get_checkpoint_conversion_mapping(base.__name__)
    if mapping is not None:
        register_checkpoint_conversion_mapping(cls.__name__, mapping, overwrite=True)


class PerLayerWidths:
    """Mixin before a stock transformers class: build the stock model, then resize its decoder layers."""

    mucrasp_decoder_layers = "model.layers"
    mucrasp_text_config = ""
    mucrasp_head_count_attributes = ("num_heads", "num_attention_heads")
    mucrasp_kv_head_count_attributes = ("num_key_value_heads",)

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_decoder_layers(
            self,
            config,
            self.mucrasp_decoder_layers,
            self.mucrasp_text_config,
            self.mucrasp_head_count_attributes,
            self.mucrasp_kv_head_count_attributes,
        )
        self.init_weights()  # initialises only the new projections (from_config); from_pretrained loads them
'''

_CLASS = """

class {name}(PerLayerWidths, transformers.{base_class}):
    mucrasp_decoder_layers = {decoder_layers!r}
    mucrasp_text_config = {text_config!r}
    mucrasp_head_count_attributes = {head_count_attributes!r}
    mucrasp_kv_head_count_attributes = {kv_head_count_attributes!r}


share_checkpoint_conversion({name}, transformers.{base_class})
"""


def remote_code_class_name(names: dict) -> str:
    """The remote-code class: `Mucrasp` + the stock name, as `export vllm` names the architecture."""
    return "Mucrasp" + names["base_class"]


def remote_code_source(names: dict) -> str:
    """The module's source for one family, from the names its adapter supplies (`hf_remote_code_names`)."""
    fields = {
        **names,
        "head_count_attributes": tuple(names["head_count_attributes"]),
        "kv_head_count_attributes": tuple(names["kv_head_count_attributes"]),
    }
    return _TEMPLATE + _CLASS.format(name=remote_code_class_name(names), **fields)


def write_remote_code(folder: str | Path, names: dict | None) -> dict[str, str]:
    """Write the module into a saved checkpoint folder and name its class in config.json's `auto_map`.

    `names` None (a uniform, stock checkpoint): remove the module and its `auto_map` entries, which a
    model loaded through this very module would otherwise carry into the stock folder.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    ours = MODULE_NAME + "."
    auto_map = {k: v for k, v in (config.get("auto_map") or {}).items() if not str(v).startswith(ours)}
    if names is None:
        (folder / FILE_NAME).unlink(missing_ok=True)
        if "auto_map" not in config:
            return {}
    else:
        (folder / FILE_NAME).write_text(remote_code_source(names))
        auto_map[names["auto_class"]] = ours + remote_code_class_name(names)
    if auto_map:
        config["auto_map"] = auto_map
    else:
        config.pop("auto_map", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return auto_map


__all__ = ["FILE_NAME", "MODULE_NAME", "remote_code_class_name", "remote_code_source", "write_remote_code"]
