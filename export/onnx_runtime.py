"""Greedy generation with a KV cache on ONNX Runtime, driving the graphs of an ONNX export.

    gen = OnnxGenerator("out/onnx")
    result = gen.generate(input_ids, pixel_values=..., image_grid_thw=..., max_new_tokens=32)
    result.tokens        # the new token ids
    result.prompt_logits # logits of the prompt pass, [prompt_len, vocab]

One sequence at a time (batch 1). For Qwen-VL exports the 3D M-RoPE position ids are computed here,
as transformers' `get_rope_index` does for images: text advances all three axes together; an
image's tokens take (temporal, row, column) offsets from the position after the preceding text, and
the text after it resumes one past the image's largest position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mucrasp.errors import MucraspError
from mucrasp.export.onnx_manifest import read_onnx_manifest

_NP_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass
class GenerationResult:
    tokens: list[int]
    prompt_logits: np.ndarray  # [prompt_len, vocab], float32
    step_logits: list[np.ndarray]  # logits that chose each new token after the first, [vocab]


def mrope_position_ids(input_ids: Sequence[int], image_grid_thw, image_token_id: int, merge: int) -> np.ndarray:
    """[3, len(input_ids)] M-RoPE positions of one prompt with images (Qwen2-VL / Qwen2.5-VL rules)."""
    ids = list(int(t) for t in input_ids)
    grids = [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in np.asarray(image_grid_thw)]
    out = np.zeros((3, len(ids)), dtype=np.int64)
    i, start, image = 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            out[:, i] = start
            start += 1
            i += 1
            continue
        if image >= len(grids):
            raise MucraspError("more image placeholder runs in the prompt than images given")
        t, h, w = grids[image]
        lh, lw = h // merge, w // merge
        n = t * lh * lw
        if ids[i : i + n] != [image_token_id] * n:
            raise MucraspError(f"image {image} needs {n} placeholder tokens in a row")
        out[0, i : i + n] = np.repeat(np.arange(t), lh * lw) + start
        out[1, i : i + n] = np.tile(np.repeat(np.arange(lh), lw), t) + start
        out[2, i : i + n] = np.tile(np.arange(lw), t * lh) + start
        start = int(out[:, i : i + n].max()) + 1
        i += n
        image += 1
    return out


class OnnxGenerator:
    """Runs an `export onnx` folder: vision encoder and embedding (VL), then the decoder with past."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_onnx_manifest(self.folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {
            name: ort.InferenceSession(str(self.folder / graph["file"]), options, providers=providers)
            for name, graph in self.manifest["graphs"].items()
        }
        self.dtype = _NP_DTYPES[self.manifest["dtype"]]
        self.decoder = self.manifest["decoder"]
        self.vision = self.decoder["position_ids"] == "mrope_3d"
        self.special = self.manifest["special_tokens"]
        self.deepstack_levels = self.decoder.get("deepstack_levels", 0)

    # ---- pieces ------------------------------------------------------------------------------
    def image_features(self, pixel_values, image_grid_thw) -> np.ndarray:
        """Features of every image, in order: the vision graph runs once per image."""
        return self.vision_outputs(pixel_values, image_grid_thw)[0]

    def vision_outputs(self, pixel_values, image_grid_thw) -> tuple[np.ndarray, np.ndarray | None]:
        """(image features, deepstack features [levels, tokens, hidden] or None) of every image, in order."""
        if "vision" not in self.sessions:
            raise MucraspError("this export has no vision encoder graph; pass image_features")
        fixed = self.manifest["vision"].get("grid_thw")  # None: the graph takes image_grid_thw, any size
        expected = tuple(fixed) if fixed else None
        pixel_values = np.asarray(pixel_values, dtype=self.dtype)
        features, deepstack, start = [], [], 0
        for grid in np.asarray(image_grid_thw).reshape(-1, 3):
            if expected is not None and tuple(int(x) for x in grid) != expected:
                patch = self.manifest["vision"]["patch_size"]
                raise MucraspError(
                    f"image grid {tuple(int(x) for x in grid)} differs from the exported {expected}; resize images "
                    f"to {expected[1] * patch}x{expected[2] * patch} pixels"
                )
            n = int(np.prod(grid))
            feed = {"pixel_values": pixel_values[start : start + n]}
            if expected is None:
                feed["image_grid_thw"] = np.asarray(grid, dtype=np.int64).reshape(1, 3)
            outputs = self.sessions["vision"].run(None, feed)
            features.append(outputs[0])
            deepstack += outputs[1:]
            start += n
        return np.concatenate(features, 0), np.concatenate(deepstack, 1) if deepstack else None

    def embed(
        self, input_ids: np.ndarray, image_features: np.ndarray | None, deepstack_features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(inputs_embeds, deepstack_embeds [levels, B, S, hidden] or None)."""
        hidden = self.decoder["hidden_size"]
        if image_features is None:
            image_features = np.zeros((0, hidden), dtype=self.dtype)
        feed = {"input_ids": input_ids.astype(np.int64), "image_features": image_features.astype(self.dtype)}
        if self.deepstack_levels:
            if deepstack_features is None:
                deepstack_features = np.zeros((self.deepstack_levels, len(image_features), hidden), dtype=self.dtype)
            feed["deepstack_features"] = deepstack_features.astype(self.dtype)
        outputs = self.sessions["embedding"].run(None, feed)
        return outputs[0], outputs[1] if self.deepstack_levels else None

    def empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for layer in self.decoder["layers"]:
            shape = (1, layer["num_key_value_heads"], 0, layer["head_dim"])
            past[layer["past_key"]] = np.zeros(shape, dtype=self.dtype)
            past[layer["past_value"]] = np.zeros(shape, dtype=self.dtype)
        return past

    def step(
        self,
        inputs: np.ndarray,
        position_ids: np.ndarray,
        past: dict,
        total_len: int,
        deepstack_embeds: np.ndarray | None = None,
    ):
        """One decoder call; returns logits [S, vocab] (float32) and the new past."""
        feed = {
            "inputs_embeds" if self.vision else "input_ids": inputs,
            "position_ids": position_ids,
            "attention_mask": np.ones((1, total_len), dtype=np.int64),
            **past,
        }
        if self.deepstack_levels:
            if deepstack_embeds is None:  # no image tokens in this call
                deepstack_embeds = np.zeros((self.deepstack_levels, *inputs.shape), dtype=self.dtype)
            feed["deepstack_embeds"] = deepstack_embeds
        outputs = self.sessions["decoder"].run(None, feed)
        names = [o.name for o in self.sessions["decoder"].get_outputs()]
        result = dict(zip(names, outputs))
        new_past = {}
        for layer in self.decoder["layers"]:
            new_past[layer["past_key"]] = result[layer["present_key"]]
            new_past[layer["past_value"]] = result[layer["present_value"]]
        return result["logits"][0].astype(np.float32), new_past

    # ---- generation ---------------------------------------------------------------------------
    def generate(
        self,
        input_ids,
        pixel_values=None,
        image_grid_thw=None,
        image_features=None,
        max_new_tokens: int = 32,
        eos_token_id: int | list[int] | None = None,
        stop_at_eos: bool = True,
        deepstack_features=None,
    ) -> GenerationResult:
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        prompt_len = ids.shape[1]
        if eos_token_id is None:
            eos_token_id = self.special.get("eos_token_id")
        eos = set(
            eos_token_id if isinstance(eos_token_id, list) else [eos_token_id] if eos_token_id is not None else []
        )
        past = self.empty_past()
        deepstack = None
        if self.vision:
            if image_features is None and pixel_values is not None:
                image_features, deepstack_features = self.vision_outputs(pixel_values, image_grid_thw)
            if image_features is not None and self.deepstack_levels and deepstack_features is None:
                raise MucraspError(
                    "this export adds deepstack features to the decoder; pass pixel_values or "
                    "deepstack_features with image_features"
                )
            merge = self.manifest["vision"]["spatial_merge_size"]
            positions = mrope_position_ids(ids[0], image_grid_thw, self.special["image_token_id"], merge)
            delta = int(positions.max()) + 1 - prompt_len
            inputs, deepstack = self.embed(ids, image_features, deepstack_features)
            position_ids = positions[:, None, :]
        else:
            delta = 0
            inputs = ids
            position_ids = np.arange(prompt_len, dtype=np.int64)[None, :]
        logits, past = self.step(inputs, position_ids, past, prompt_len, deepstack)
        prompt_logits, step_logits = logits, []
        tokens: list[int] = []
        next_token = int(np.argmax(logits[-1]))
        while True:
            tokens.append(next_token)
            if len(tokens) >= max_new_tokens or (stop_at_eos and next_token in eos):
                break
            total = prompt_len + len(tokens)
            position = np.array([[total - 1 + delta]], dtype=np.int64)
            token = np.array([[next_token]], dtype=np.int64)
            if self.vision:
                inputs, position_ids = self.embed(token, None)[0], np.repeat(position[None], 3, axis=0)
            else:
                inputs, position_ids = token, position
            logits, past = self.step(inputs, position_ids, past, total)
            step_logits.append(logits[-1])
            next_token = int(np.argmax(logits[-1]))
        return GenerationResult(tokens=tokens, prompt_logits=prompt_logits, step_logits=step_logits)
