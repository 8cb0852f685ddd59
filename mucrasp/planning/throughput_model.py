"""Roofline throughput at a pruning ratio: decode is bound by memory reads, prefill by FLOPs.

Figures are upper bounds (peak bandwidth and peak FLOPs, no kernel overheads); with a measured
profile they are what this machine achieved in a plain copy and matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mucrasp.planning.memory_model import kv_bytes_per_token
from mucrasp.planning.profiles import DTYPE_BYTES, Profile
from mucrasp.planning.workload import Workload

if TYPE_CHECKING:
    from mucrasp.planning.model_shape import ModelShape


@dataclass(frozen=True)
class ThroughputEstimate:
    decode_tokens_per_s: float  # aggregate over all sequences in flight
    decode_bound: str  # "memory" or "compute"
    prefill_tokens_per_s: float  # one sequence's prompt


def _attention_flops(shape: ModelShape, ratio: float, context: float) -> float:
    # QK^T and attention×V: two multiply-adds per query head, head dim and past token.
    return 4 * shape.query_heads_total(ratio) * shape.head_dim * context


def estimate_throughput(
    shape: ModelShape, ratio: float, workload: Workload, profile: Profile, dtype: str
) -> ThroughputEstimate:
    n, context = workload.concurrency, workload.max_model_len
    read_params = shape.decode_read_params(ratio)
    # Worst case: every sequence in flight at the full context, so each step reads its whole KV cache.
    step_bytes = read_params * DTYPE_BYTES[dtype] + n * context * kv_bytes_per_token(shape, ratio, dtype)
    step_flops = n * (2 * read_params + _attention_flops(shape, ratio, context))
    memory_s = step_bytes / profile.bandwidth_bytes_per_s
    compute_s = step_flops / profile.flops_per_s
    # The output head runs once per prompt, not per prompt token; past tokens average half the context.
    prefill_flops_per_token = 2 * (read_params - (shape.lm_head_params or shape.embedding_params)) + _attention_flops(
        shape, ratio, context / 2
    )
    return ThroughputEstimate(
        decode_tokens_per_s=n / max(memory_s, compute_s),
        decode_bound="memory" if memory_s >= compute_s else "compute",
        prefill_tokens_per_s=profile.flops_per_s / prefill_flops_per_token,
    )
