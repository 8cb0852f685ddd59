"""`python -m mucrasp.serve.offline_worker request.json`: the `--offline` smoke run's vllm.LLM process.

A process of its own so the caller never imports vLLM, the engine's memory is the process's, and
its exit frees everything. vLLM offline has no per-request clock, so only aggregate figures come back.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mucrasp  # noqa: F401  (CPU-torch workarounds before vLLM imports transformers)


def _messages(request: dict) -> list[dict]:
    if request["image"] is None:
        return [{"role": "user", "content": request["prompt"]}]
    from PIL import Image

    with Image.open(request["image"]) as image:
        pil = image.convert("RGB")
    return [
        {
            "role": "user",
            "content": [{"type": "image_pil", "image_pil": pil}, {"type": "text", "text": request["prompt"]}],
        }
    ]


def main(path: str) -> None:
    job = json.loads(Path(path).read_text())
    from vllm import LLM, SamplingParams

    kwargs = {"dtype": job["dtype"], "max_model_len": job["max_model_len"], "seed": 0}
    if job["vision"]:
        kwargs["limit_mm_per_prompt"] = {"image": 1}
    if job.get("tensor_parallel_size", 1) > 1:
        kwargs["tensor_parallel_size"] = job["tensor_parallel_size"]
    if job["gpu"]:
        if job["gpu_memory_utilization"]:
            kwargs["gpu_memory_utilization"] = job["gpu_memory_utilization"]
    else:
        kwargs["enforce_eager"] = True
    llm = LLM(job["model"], **kwargs)

    def run(requests: list[dict]):
        params = [
            SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=r["ignore_eos"]) for r in requests
        ]
        return llm.chat([_messages(r) for r in requests], params, use_tqdm=False)

    run(job["load"][:1])  # warm-up
    start = time.perf_counter()
    outputs = run(job["load"])
    wall = time.perf_counter() - start
    load = [
        {
            "text": o.outputs[0].text,
            "output_tokens": len(o.outputs[0].token_ids),
            "ttft_s": float("nan"),
            "latency_s": float("nan"),
        }
        for o in outputs
    ]
    spot = [o.outputs[0].text.strip() for o in run(job["spot"])] if job["spot"] else []
    Path(job["result"]).write_text(json.dumps({"load": load, "load_wall_s": wall, "spot": spot}))


if __name__ == "__main__":
    main(sys.argv[1])
