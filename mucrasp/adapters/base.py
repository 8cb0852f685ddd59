"""What an architecture adapter knows: everything family specific, in one place.

Every supported family stores its decoder layers as `self_attn.{q,k,v,o}_proj` and
`mlp.{gate,up,down}_proj`, so the base class does the slicing; a family file says where the
language model lives, what the planner must count (q/k/v biases, per-layer norms, the vision
tower), the ONNX vision hooks, its stop tokens, which vLLM class serves its per-layer form, and
the tiny config the tests build.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class AttentionShape:
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


class ArchitectureAdapter:
    """Base adapter for decoders built from Llama-style layers."""

    architecture: str = ""
    is_vision_language: bool = False
    #: Whether stock model code (transformers and vLLM) honours `head_dim` from the config, so that a
    #: uniform checkpoint with fewer heads still loads as a stock one. Qwen's attention derives
    #: head_dim from hidden_size / num_attention_heads, which breaks once heads are removed.
    stock_config_honours_head_dim: bool = True
    #: Attributes on the attention module that cache head counts; rewritten when groups are removed.
    attention_head_count_attributes: tuple[str, ...] = ("num_heads", "num_attention_heads")
    attention_kv_head_count_attributes: tuple[str, ...] = ("num_key_value_heads",)
    #: Chat-turn end tokens that stop generation besides the tokenizer's eos (absent ones are skipped).
    stop_tokens: tuple[str, ...] = ()
    #: "module:Class" that vLLM imports (lazily, inside its own processes) to serve this family's
    #: per-layer checkpoints; None: per-layer checkpoints of this family are not served by vLLM.
    vllm_per_layer_class: str | None = None
    #: onnxruntime-genai's `model.type` for this family's ONNX exports (genai_config.json); None: not run there.
    onnx_genai_type: str | None = None
    #: The transformers Auto class that loads this family; a per-layer checkpoint's `auto_map` names
    #: its remote-code class (export/hf_remote_code.py) under it.
    hf_auto_class: str = "AutoModelForCausalLM"

    @property
    def per_layer_architecture(self) -> str:
        """What `export vllm` names a per-layer checkpoint of this family (see registry)."""
        from mucrasp.adapters.registry import EXPORTED_ARCHITECTURE_PREFIX

        return EXPORTED_ARCHITECTURE_PREFIX + self.architecture

    # ---- where things are -------------------------------------------------------------------
    def model_class(self) -> type[PreTrainedModel]:
        return getattr(transformers, self.architecture)

    def text_config(self, config: PretrainedConfig) -> PretrainedConfig:
        """The config that sizes the decoder (a VL model's `text_config`, a text model's own)."""
        return config

    def language_model(self, model: PreTrainedModel) -> nn.Module:
        """The decoder stack, whose `.layers` are pruned."""
        return model.model

    def decoder_layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return self.language_model(model).layers

    def embed_tokens(self, model: PreTrainedModel) -> nn.Module:
        return self.language_model(model).embed_tokens

    @staticmethod
    def mlp_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        mlp = layer.mlp
        return mlp.gate_proj, mlp.up_proj, mlp.down_proj

    @staticmethod
    def attention_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        attn = layer.self_attn
        return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj

    def hf_remote_code_names(self, model: PreTrainedModel) -> dict:
        """What the Auto-class module of a per-layer checkpoint (export/hf_remote_code.py) needs: the stock
        class it subclasses, the Auto class it registers under, the dotted paths of the decoder layers (in
        the model) and of the text config (in the config; "" for the config itself), found from
        `decoder_layers` and `text_config`, and the attention attributes that cache head counts."""
        layers, text = self.decoder_layers(model), self.text_config(model.config)
        return {
            "base_class": self.architecture,
            "auto_class": self.hf_auto_class,
            "decoder_layers": next(name for name, module in model.named_modules() if module is layers),
            "text_config": "" if text is model.config else next(k for k, v in vars(model.config).items() if v is text),
            "head_count_attributes": list(self.attention_head_count_attributes),
            "kv_head_count_attributes": list(self.attention_kv_head_count_attributes),
        }

    # ---- sizes --------------------------------------------------------------------------------
    def head_dim(self, config: PretrainedConfig) -> int:
        text = self.text_config(config)
        explicit = getattr(text, "head_dim", None)
        return int(explicit) if explicit else text.hidden_size // text.num_attention_heads

    def group_size(self, config: PretrainedConfig) -> int:
        text = self.text_config(config)
        return text.num_attention_heads // text.num_key_value_heads

    def layer_widths(self, model: PreTrainedModel) -> list[tuple[int, int]]:
        """(MLP channels, KV groups) of every decoder layer, read from the weights themselves."""
        head_dim = self.head_dim(model.config)
        widths = []
        for layer in self.decoder_layers(model):
            gate, _, _ = self.mlp_projections(layer)
            _, k_proj, _, _ = self.attention_projections(layer)
            widths.append((gate.out_features, k_proj.out_features // head_dim))
        return widths

    def mlp_channel_cost(self, layer: nn.Module) -> int:
        """Parameters removed with one MLP channel (gate row, up row, down column, and their biases)."""
        gate, up, down = self.mlp_projections(layer)
        cost = gate.in_features + up.in_features + down.out_features
        cost += int(gate.bias is not None) + int(up.bias is not None)
        return cost

    def attn_group_cost(self, layer: nn.Module, config: PretrainedConfig) -> int:
        """Parameters removed with one GQA group: its q/k/v rows (and biases) and o_proj columns."""
        q_proj, k_proj, v_proj, o_proj = self.attention_projections(layer)
        head_dim, group = self.head_dim(config), self.group_size(config)
        rows = (group + 2) * head_dim
        cost = rows * q_proj.in_features + group * head_dim * o_proj.out_features
        cost += sum(
            head_dim * (group if proj is q_proj else 1) for proj in (q_proj, k_proj, v_proj) if proj.bias is not None
        )
        return cost

    # ---- what the planner counts from a config alone (mucrasp.planning.model_shape) ------------
    def qkv_bias(self, config: PretrainedConfig) -> bool:
        return bool(getattr(self.text_config(config), "attention_bias", False))

    def layer_norm_params(self, config: PretrainedConfig) -> int:
        """Norm parameters of one decoder layer, which no unit owns (input and post-attention RMSNorms)."""
        return 2 * self.text_config(config).hidden_size

    def vision_params(self, config: PretrainedConfig) -> int:
        return 0

    # ---- generation, tests ------------------------------------------------------------------------
    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end a reply: the tokenizer's eos and this family's turn-end tokens it knows."""
        ids = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in self.stop_tokens)}
        return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)

    def tiny_config(self, text: dict) -> PretrainedConfig:
        """A config of this family with the text sizes `text` (see mucrasp.tiny_models)."""
        raise NotImplementedError(f"no tiny config for {self.architecture}")

    # ---- slicing --------------------------------------------------------------------------------
    def slice_layer(
        self, layer: nn.Module, config: PretrainedConfig, mlp_keep: torch.Tensor, group_keep: torch.Tensor
    ) -> None:
        """Replace a layer's projections by smaller dense ones that hold only the kept units."""
        gate, up, down = self.mlp_projections(layer)
        layer.mlp.gate_proj = _keep_rows(gate, mlp_keep)
        layer.mlp.up_proj = _keep_rows(up, mlp_keep)
        layer.mlp.down_proj = _keep_columns(down, mlp_keep)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = len(mlp_keep)

        head_dim, group = self.head_dim(config), self.group_size(config)
        kv_rows = _expand(group_keep, head_dim)
        q_rows = _expand(_expand(group_keep, group), head_dim)
        q_proj, k_proj, v_proj, o_proj = self.attention_projections(layer)
        attn = layer.self_attn
        attn.q_proj = _keep_rows(q_proj, q_rows)
        attn.k_proj = _keep_rows(k_proj, kv_rows)
        attn.v_proj = _keep_rows(v_proj, kv_rows)
        attn.o_proj = _keep_columns(o_proj, q_rows)
        for name in self.attention_head_count_attributes:
            if hasattr(attn, name):
                setattr(attn, name, len(group_keep) * group)
        for name in self.attention_kv_head_count_attributes:
            if hasattr(attn, name):
                setattr(attn, name, len(group_keep))

    def mask_layer(
        self, layer: nn.Module, config: PretrainedConfig, mlp_keep: torch.Tensor, group_keep: torch.Tensor
    ) -> None:
        """Zero the removed units in place, keeping shapes: the reference slicing must reproduce."""
        gate, up, down = self.mlp_projections(layer)
        mlp_drop = _complement(mlp_keep, gate.out_features)
        head_dim, group = self.head_dim(config), self.group_size(config)
        _, k_proj, _, _ = self.attention_projections(layer)
        group_drop = _complement(group_keep, k_proj.out_features // head_dim)
        kv_rows = _expand(group_drop, head_dim)
        q_rows = _expand(_expand(group_drop, group), head_dim)
        q_proj, k_proj, v_proj, o_proj = self.attention_projections(layer)
        with torch.no_grad():
            for linear, rows in (
                (gate, mlp_drop),
                (up, mlp_drop),
                (q_proj, q_rows),
                (k_proj, kv_rows),
                (v_proj, kv_rows),
            ):
                linear.weight[rows] = 0
                if linear.bias is not None:
                    linear.bias[rows] = 0
            down.weight[:, mlp_drop] = 0
            o_proj.weight[:, q_rows] = 0


def _expand(indices: torch.Tensor, factor: int) -> torch.Tensor:
    """Unit indices -> the row indices they own, e.g. group g -> rows g*factor .. g*factor+factor-1."""
    return (indices[:, None] * factor + torch.arange(factor)[None, :]).reshape(-1)


def _complement(keep: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().reshape(-1)


def _new_linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features, out_features, bias=like.bias is not None, device=like.weight.device, dtype=like.weight.dtype
    )


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    sliced = _new_linear(linear, linear.in_features, len(rows))
    with torch.no_grad():
        sliced.weight.copy_(linear.weight[rows.to(linear.weight.device)])
        if linear.bias is not None:
            sliced.bias.copy_(linear.bias[rows.to(linear.bias.device)])
    return sliced


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    sliced = _new_linear(linear, len(columns), linear.out_features)
    with torch.no_grad():
        sliced.weight.copy_(linear.weight[:, columns.to(linear.weight.device)])
        if linear.bias is not None:
            sliced.bias.copy_(linear.bias)
    return sliced
