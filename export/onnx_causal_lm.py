"""A transformers-shaped view of an `export onnx` folder, for the code that measures models.

The evaluation (`mucrasp.evaluation`: CoT KL, agreement) and the smoke test's KL read a causal LM
through two calls, `model(**inputs).logits` (teacher-forced) and `model.generate(...)` (greedy).
`OnnxCausalLM` answers both with ONNX Runtime through `OnnxGenerator`, so an fp16, int8 or int4
export is measured by the same code, on the same records, as the torch checkpoint it came from.

One sequence at a time, as `OnnxGenerator` runs: the rows of a left-padded text batch are run one
by one with their padding dropped; a batch with images must hold one prompt (evaluate() asks for
batches of one for an ONNX export).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    from mucrasp.export.onnx_runtime import OnnxGenerator


def _numpy(tensor):
    return None if tensor is None else tensor.detach().cpu().numpy()


class OnnxCausalLM:
    """`export`: an `export onnx` folder, or an `OnnxGenerator` already running it (the smoke test's)."""

    def __init__(self, export: str | Path | OnnxGenerator, config: Any, providers: list[str] | None = None):
        import torch

        from mucrasp.export.onnx_runtime import OnnxGenerator

        self.generator = export if isinstance(export, OnnxGenerator) else OnnxGenerator(export, providers=providers)
        self.manifest = self.generator.manifest
        # The dense model's HF config: the family's stop tokens and whether it takes images.
        self.config = config
        self.device = torch.device("cpu")

    @property
    def image_size(self) -> int | None:
        """Pixels a side of the one image size the vision graph was traced at; None: text, or any size."""
        vision = self.manifest.get("vision")
        if not vision or not vision.get("grid_thw"):
            return None
        return int(vision["grid_thw"][1] * vision["patch_size"])

    @property
    def weights(self) -> str:
        return self.manifest.get("weights", {}).get("format") or self.manifest["dtype"]

    def _one(self, input_ids, pixel_values, image_grid_thw, **generate):
        return self.generator.generate(
            _numpy(input_ids), pixel_values=_numpy(pixel_values), image_grid_thw=_numpy(image_grid_thw), **generate
        )

    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None, **_: Any):
        """Logits of the prompt pass, [1, tokens, vocab] in fp32: the graphs' teacher-forced prediction."""
        import torch

        if input_ids.shape[0] != 1:
            raise MucraspError(f"an ONNX export scores one sequence at a time, got a batch of {input_ids.shape[0]}")
        result = self._one(input_ids[0], pixel_values, image_grid_thw, max_new_tokens=1, stop_at_eos=False)
        return SimpleNamespace(logits=torch.from_numpy(result.prompt_logits)[None])

    def generate(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        max_new_tokens: int = 32,
        eos_token_id=None,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        **_: Any,
    ):
        """Greedy continuations as `transformers.generate` returns them: [rows, prompt + new], right-padded."""
        import torch

        if do_sample:
            raise MucraspError("an ONNX export is measured with greedy decoding only")
        rows = input_ids.shape[0]
        if pixel_values is not None and rows != 1:
            raise MucraspError(f"an ONNX export answers one prompt with images at a time, got {rows}")
        eos = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else eos_token_id
        answers = []
        for row in range(rows):
            ids = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
            result = self._one(ids, pixel_values, image_grid_thw, max_new_tokens=max_new_tokens, eos_token_id=eos)
            answers.append(result.tokens)
        pad = pad_token_id if pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos) or 0
        new = torch.full((rows, max(len(a) for a in answers)), pad, dtype=input_ids.dtype)
        for row, tokens in enumerate(answers):
            new[row, : len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)


__all__ = ["OnnxCausalLM"]
