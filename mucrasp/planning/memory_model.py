"""Serving memory at a pruning ratio and weight format: weights, KV cache, activations and the runtime's reserve.

A quantized format stores the decoder's projections (the weights the ratio counts) at its
`bytes_per_weight`; embeddings, output head, norms and vision tower stay at the dtype (see
mucrasp.planning.weight_formats). KV cache and activations stay at the dtype too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mucrasp.planning.profiles import DTYPE_BYTES, Profile
from mucrasp.planning.weight_formats import get_format
from mucrasp.planning.workload import Workload

if TYPE_CHECKING:
    from mucrasp.planning.model_shape import ModelShape

# Sampling keeps logits in fp32 whatever the weights' dtype.
LOGIT_BYTES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    vision_bytes: float
    text_bytes: float
    kv_bytes: float
    activation_bytes: float
    reserve_bytes: float

    @property
    def weights_bytes(self) -> float:
        return self.vision_bytes + self.text_bytes

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes + self.reserve_bytes


def text_weight_bytes(shape: ModelShape, ratio: float, dtype: str, weights: str | None = None) -> float:
    """The decoder, embeddings and output head: projections at the format's bytes, the rest at the dtype."""
    fmt = get_format(weights or dtype)
    projections = shape.projection_params(ratio)
    stored = fmt.bytes_per_weight_at(shape.hidden_size) if fmt.quantized else DTYPE_BYTES[dtype]
    return (shape.text_params(ratio) - projections) * DTYPE_BYTES[dtype] + projections * stored


def kv_bytes_per_token(shape: ModelShape, ratio: float, dtype: str) -> float:
    """K and V of every layer for one token."""
    return 2 * shape.head_dim * shape.kv_heads_total(ratio) * DTYPE_BYTES[dtype]


def kv_cache_bytes(shape: ModelShape, ratio: float, workload: Workload, dtype: str) -> float:
    return kv_bytes_per_token(shape, ratio, dtype) * workload.max_model_len * workload.concurrency


def activation_bytes(shape: ModelShape, workload: Workload, dtype: str) -> float:
    """Peak of one forward pass: a few hidden-size buffers, the MLP's gate/up/product and the q/k/v
    rows for every batched token, plus fp32 logits per sequence. Kept at the unpruned widths: the
    peak is set by the widest layer, which pruning may leave whole."""
    tokens = min(workload.max_batched_tokens, workload.max_model_len * workload.concurrency)
    qkv = (shape.group_size + 2) * max(shape.kv_heads) * shape.head_dim
    per_token = (4 * shape.hidden_size + 3 * shape.max_intermediate + qkv) * DTYPE_BYTES[dtype]
    return tokens * per_token + workload.concurrency * shape.vocab_size * LOGIT_BYTES


def estimate_memory(
    shape: ModelShape, ratio: float, workload: Workload, profile: Profile, dtype: str, weights: str | None = None
) -> MemoryEstimate:
    """`weights`: a format name from the catalogue; None: dense at `dtype`."""
    return MemoryEstimate(
        vision_bytes=shape.vision_params * DTYPE_BYTES[dtype],
        text_bytes=text_weight_bytes(shape, ratio, dtype, weights),
        kv_bytes=kv_cache_bytes(shape, ratio, workload, dtype),
        activation_bytes=activation_bytes(shape, workload, dtype),
        reserve_bytes=profile.runtime_reserve_gb * 1e9 * profile.gpu_count,
    )


def checkpoint_weight_bytes(model_dir, dtype: str, weights: str | None = None) -> float:
    """The planner's weight bytes for a checkpoint folder as it stands (its own, possibly pruned, widths;
    ratio 0 on them) served at `dtype`, its projections in `weights` (None: unquantized). This is the
    figure to hold against what a server allocated (bench/serve.py, against vLLM's `Model loading took`)."""
    from mucrasp.model_loading import read_model_config
    from mucrasp.planning.model_shape import model_shape

    config, adapter = read_model_config(model_dir)
    shape = model_shape(config, adapter)
    return shape.vision_params * DTYPE_BYTES[dtype] + text_weight_bytes(shape, 0.0, dtype, weights)
