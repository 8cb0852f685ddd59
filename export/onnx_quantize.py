"""Weight formats of an ONNX export (`export onnx --weights fp32|fp16|int8|int4`), by ONNX Runtime's own tools.

- fp32 / fp16: the graphs are traced in that dtype; nothing else happens.
- int8: `onnxruntime.quantization.quantize_dynamic` on the decoder graph's MatMuls: int8 weights, symmetric,
  one scale per output channel; activations quantized per call (DynamicQuantizeLinear -> MatMulInteger).
- int4: `MatMulNBitsQuantizer` on the decoder graph's MatMuls: 4-bit weights in blocks of `INT4_BLOCK_SIZE`
  along the input dimension, with a scale and (as the catalogue `mucrasp.planning.weight_formats` sizes
  it) a zero point per block (the `MatMulNBits` CPU kernel), with int8 compute (accuracy level 4), which
  is what makes it fast on x86.

Only the decoder graph is quantized: it is what every generated token reads. The vision graph runs once per
image and stays fp32 (quantizing it is not measured yet), and the embedding graph is a row lookup, not a
matrix product. The attention score MatMuls (activation x activation) have no constant weight and stay
fp32; the quantizers leave them alone.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from mucrasp.errors import MucraspError
from mucrasp.planning.weight_formats import EXPORT_WEIGHTS, ONNX, check_export_weights, get_format

ONNX_WEIGHTS = EXPORT_WEIGHTS[ONNX]  # fp32, fp16, int8, int4: the catalogue's names
FLOAT_WEIGHTS = ("fp32", "fp16")
QUANTIZED_WEIGHTS = tuple(w for w in ONNX_WEIGHTS if w not in FLOAT_WEIGHTS)
# Block size and zero points as the planner's catalogue sizes them, so the planned bytes are the written ones.
INT4_BLOCK_SIZE = get_format("int4").group_size
INT4_SYMMETRIC = get_format("int4").zero_point_bytes == 0
INT4_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits: the fast path of its x86 kernel


def resolve_weights(weights: str | None, dtype: str) -> tuple[str, str]:
    """(weights, graph dtype) for `export_onnx`: `weights` None means the graphs' own dtype."""
    if weights is None:
        weights = dtype
    check_export_weights(ONNX, weights)
    if weights in FLOAT_WEIGHTS:
        if dtype not in ("fp32", weights):
            raise MucraspError(f"--weights {weights} and --dtype {dtype} disagree; give one of them")
        return weights, weights
    if dtype != "fp32":
        # quantize_dynamic takes fp32 graphs only; one rule for both formats keeps the activations fp32
        raise MucraspError(f"--weights {weights} quantizes an fp32 graph; drop --dtype {dtype}")
    return weights, "fp32"


@contextlib.contextmanager
def _quiet():
    """The quantizers log one line per node at INFO through the root logger; keep the CLI output ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(path: Path, weights: str, int4_accuracy_level: int = INT4_ACCURACY_LEVEL) -> dict:
    """Quantize the weights of the graph at `path` in place (graph and its external data); returns the record
    manifest.json keeps. `int4_accuracy_level`: MatMulNBits' compute type (1 fp32, 4 int8 activations)."""
    import onnx

    if weights not in QUANTIZED_WEIGHTS:
        raise MucraspError(f"not a quantized weight format: {weights!r}")
    model = onnx.load(str(path))  # with its external data: the file names are reused for the output
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    with _quiet():
        if weights == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                model,
                str(path),
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=True,
            )
            record = {"method": "onnxruntime quantize_dynamic", "weight_type": "int8", "per_channel": True}
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )

            config = DefaultWeightOnlyQuantConfig(
                block_size=INT4_BLOCK_SIZE, is_symmetric=INT4_SYMMETRIC, accuracy_level=int4_accuracy_level
            )
            quantizer = MatMulNBitsQuantizer(model, algo_config=config)
            quantizer.process()
            quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
            record = {
                "method": "onnxruntime MatMulNBitsQuantizer",
                "weight_type": "int4",
                "block_size": INT4_BLOCK_SIZE,
                "symmetric": INT4_SYMMETRIC,
                "accuracy_level": int4_accuracy_level,
            }
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {"MatMulInteger", "MatMulNBits"}
    record["quantized_matmuls"] = sum(node.op_type in ops for node in graph.node)
    record["float_matmuls"] = sum(node.op_type == "MatMul" for node in graph.node)
    if record["quantized_matmuls"] == 0:
        raise MucraspError(f"{path.name}: the quantizer found no MatMul with constant weights")
    return record
