"""Roofline throughput at a pruning ratio and weight format: decode is bound by memory reads, prefill by FLOPs.

A quantized format shrinks the projection bytes each decode step reads; an int8/fp8 W8A8 format on a
GPU that runs it at full speed also doubles the projections' matmul rate (weight_formats.compute_speedup).
Time to first token: the vision tower on the workload's image, then the prompt's prefill (text and
image tokens), each at peak FLOPs, and at least one read of the weights.

Figures are upper bounds (peak bandwidth and peak FLOPs, no kernel overheads); with a measured
profile they are what this machine achieved in a plain copy and matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mucrasp.errors import MucraspError
from mucrasp.planning.memory_model import kv_bytes_per_token, text_weight_bytes
from mucrasp.planning.profiles import DTYPE_BYTES, Profile
from mucrasp.planning.weight_formats import get_format
from mucrasp.planning.workload import Workload

if TYPE_CHECKING:
    from mucrasp.planning.model_shape import ModelShape


@dataclass(frozen=True)
class ThroughputEstimate:
    decode_tokens_per_s: float  # aggregate over all sequences in flight
    decode_bound: str  # "memory" or "compute"
    prefill_tokens_per_s: float  # one sequence's prompt
    ttft_s: float = 0.0  # one request's time to first token: vision tower plus prompt prefill
    image_tokens: int = 0  # what the workload's image adds to each prompt (and to its KV cache)
    prompt_tokens: int = 0  # text + image tokens prefilled for the first token


def _attention_flops(shape: ModelShape, ratio: float, context: float) -> float:
    # QK^T and attention×V: two multiply-adds per query head, head dim and past token.
    return 4 * shape.query_heads_total(ratio) * shape.head_dim * context


def image_tokens(shape: ModelShape, workload: Workload) -> int:
    """Tokens of the workload's image in one prompt (0: none); a clear error when they cannot be there."""
    if workload.image_tokens is None and workload.image_size is None:
        return 0
    if not shape.vision_params:
        raise MucraspError(f"workload: --image-size/--image-tokens given, but {shape.architecture} has no vision tower")
    tokens = workload.image_tokens or shape.image_tokens(workload.image_size)
    if tokens >= workload.max_model_len:
        raise MucraspError(
            f"workload field 'max_model_len': {workload.max_model_len} tokens cannot hold the image's {tokens} tokens"
        )
    return tokens


def estimate_throughput(
    shape: ModelShape, ratio: float, workload: Workload, profile: Profile, dtype: str, weights: str | None = None
) -> ThroughputEstimate:
    """`weights`: a format name from the catalogue; None: dense at `dtype`."""
    n, context = workload.concurrency, workload.max_model_len
    fmt = get_format(weights or dtype)
    read_params = shape.decode_read_params(ratio)
    projections = shape.projection_params(ratio)
    embedding_bytes = shape.embedding_params * DTYPE_BYTES[dtype] if shape.lm_head_params else 0
    read_bytes = text_weight_bytes(shape, ratio, dtype, weights) - embedding_bytes  # no gather of embeddings
    # Worst case: every sequence in flight at the full context, so each step reads its whole KV cache.
    step_bytes = read_bytes + n * context * kv_bytes_per_token(shape, ratio, dtype)
    # A full-speed W8A8 format runs the projections' matmuls faster; the rest stays at the dtype's rate.
    speedup = fmt.speedup_on(profile.compute_capability) if fmt.quantized else 1.0
    matmul_params = read_params - projections + projections / speedup
    step_flops = n * (2 * matmul_params + _attention_flops(shape, ratio, context))
    memory_s = step_bytes / profile.bandwidth_bytes_per_s
    compute_s = step_flops / profile.flops_per_s
    # The output head runs once per prompt, not per prompt token; past tokens average half the context.
    head = shape.lm_head_params or shape.embedding_params
    prefill_flops_per_token = 2 * (matmul_params - head) + _attention_flops(shape, ratio, context / 2)
    # Time to first token for one request: the image through the vision tower, then the prompt.
    image = image_tokens(shape, workload)
    text = workload.prompt_tokens or max(1, context // 2 - image)
    prompt = min(context, text + image)
    vision_flops = shape.vision_flops(image * shape.merge_size**2) if image else 0.0
    prefill_flops = prompt * 2 * (matmul_params - head) + 2 * head + _attention_flops(shape, ratio, prompt / 2) * prompt
    vision_bytes = shape.vision_params * DTYPE_BYTES[dtype] if image else 0.0
    ttft = max(vision_flops / profile.flops_per_s, vision_bytes / profile.bandwidth_bytes_per_s) + max(
        prefill_flops / profile.flops_per_s, read_bytes / profile.bandwidth_bytes_per_s
    )
    return ThroughputEstimate(
        decode_tokens_per_s=n / max(memory_s, compute_s),
        decode_bound="memory" if memory_s >= compute_s else "compute",
        prefill_tokens_per_s=profile.flops_per_s / prefill_flops_per_token,
        ttft_s=ttft,
        image_tokens=image,
        prompt_tokens=prompt,
    )
