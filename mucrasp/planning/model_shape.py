"""Parameter counts and attention shape read from a model's config alone, with no weights loaded.

The pruning ratio R removes R of the decoder's attention + MLP projection parameters (the units of
mucrasp.params). Planning assumption: a pruned model keeps the same share of KV heads as of
projection parameters, i.e. KV heads shrink by R too. The global layout may cut attention and MLP
by different shares; the proportional figure is its expected value, and KV-cache size and KV reads
both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.checkpoint import per_layer_widths


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    vision_params: int
    embedding_params: int
    lm_head_params: int  # 0 when tied to the embeddings
    decoder_fixed_params: int  # norms and biases no unit owns: not pruned
    prunable_params: int  # the base of the pruning ratio
    num_layers: int
    hidden_size: int
    head_dim: int
    group_size: int  # query heads per KV head
    kv_heads: tuple[int, ...]  # per layer
    max_intermediate: int
    vocab_size: int
    # The vision tower's geometry (0: a text-only model), for image tokens and its prefill FLOPs.
    vision_width: int = 0
    vision_depth: int = 0
    patch_size: int = 0
    merge_size: int = 1

    def text_params(self, ratio: float) -> int:
        return (
            self.embedding_params
            + self.lm_head_params
            + self.decoder_fixed_params
            + round(self.prunable_params * (1 - ratio))
        )

    def total_params(self, ratio: float) -> int:
        return self.vision_params + self.text_params(ratio)

    def projection_params(self, ratio: float) -> int:
        """The decoder's projection weights after pruning: what a quantized format stores at low bits."""
        return round(self.prunable_params * (1 - ratio))

    def decode_read_params(self, ratio: float) -> int:
        """Weights read once per decode step: the decoder and the output head (embeddings are
        gathered row by row, the vision tower runs only at prefill)."""
        head = self.lm_head_params or self.embedding_params
        return head + self.decoder_fixed_params + round(self.prunable_params * (1 - ratio))

    def image_side(self, image_size: int) -> int:
        """The side one square image of `image_size` pixels is resized to: a multiple of patch × merge,
        as Qwen's `smart_resize` does (its min/max pixel clamps are not applied)."""
        factor = self.patch_size * self.merge_size
        return max(factor, round(image_size / factor) * factor)

    def image_patches(self, image_size: int) -> int:
        """Patches of one square image of `image_size` pixels a side (resized as `image_side` says)."""
        return (self.image_side(image_size) // self.patch_size) ** 2

    def image_tokens(self, image_size: int) -> int:
        """Tokens one image adds to the prompt (and the KV cache): its patches after the merger."""
        return self.image_patches(image_size) // self.merge_size**2

    def vision_flops(self, patches: int) -> float:
        """Upper bound on one image's vision-tower FLOPs: every weight once per patch (the merger runs
        on patches / merge² but is counted per patch), and every block attending over all patches
        (Qwen2.5-VL's windowed blocks attend over fewer)."""
        return 2 * self.vision_params * patches + 4 * self.vision_depth * self.vision_width * patches**2

    def kv_heads_total(self, ratio: float) -> float:
        return sum(self.kv_heads) * (1 - ratio)  # proportional-KV assumption, see the module docstring

    def query_heads_total(self, ratio: float) -> float:
        return self.kv_heads_total(ratio) * self.group_size


def model_shape(config: PretrainedConfig, adapter: ArchitectureAdapter) -> ModelShape:
    text = adapter.text_config(config)
    hidden, layers = text.hidden_size, text.num_hidden_layers
    head_dim, group = adapter.head_dim(config), adapter.group_size(config)
    widths = per_layer_widths(config, adapter)
    mlp, kv = widths if widths else ([text.intermediate_size] * layers, [text.num_key_value_heads] * layers)
    mlp_bias = bool(getattr(text, "mlp_bias", False))
    qkv_bias = adapter.qkv_bias(config)
    o_bias = bool(getattr(text, "attention_bias", False))
    # What one unit carries, as in ArchitectureAdapter.mlp_channel_cost / attn_group_cost.
    mlp_cost = 3 * hidden + 2 * mlp_bias
    group_cost = (group + 2) * head_dim * hidden + group * head_dim * hidden + qkv_bias * (group + 2) * head_dim
    prunable = sum(m * mlp_cost + g * group_cost for m, g in zip(mlp, kv))
    # The layer's norms, plus the down/o biases that stay whatever is cut; then the final norm.
    fixed = layers * (adapter.layer_norm_params(config) + mlp_bias * hidden + o_bias * hidden) + hidden
    embedding = text.vocab_size * hidden
    tied = bool(getattr(config, "tie_word_embeddings", False))
    # Qwen2-VL names the tower's width embed_dim (its hidden_size is the output); 2.5-VL and 3-VL hidden_size.
    vision = getattr(config, "vision_config", None) if adapter.vision_params(config) else None
    return ModelShape(
        architecture=adapter.architecture,
        vision_params=adapter.vision_params(config),
        embedding_params=embedding,
        lm_head_params=0 if tied else embedding,
        decoder_fixed_params=fixed,
        prunable_params=prunable,
        num_layers=layers,
        hidden_size=hidden,
        head_dim=head_dim,
        group_size=group,
        kv_heads=tuple(kv),
        max_intermediate=max(mlp),
        vocab_size=text.vocab_size,
        vision_width=getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0) if vision else 0,
        vision_depth=getattr(vision, "depth", 0) if vision else 0,
        patch_size=getattr(vision, "patch_size", 0) if vision else 0,
        merge_size=getattr(vision, "spatial_merge_size", 1) if vision else 1,
    )
