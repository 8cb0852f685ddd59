"""`make demo` shows the planner choosing: its workload makes the planner prune the demo model, no --ratio,
in a quantized format this machine's vLLM serves (the demo exports to vLLM and smoke-tests on the CPU)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.planning import Workload, plan_model

ROOT = Path(__file__).resolve().parent.parent


def _demo_chain_args() -> list[str]:
    """The arguments of the chain command in the Makefile's `demo` target (its continuation lines joined)."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "no demo target in the Makefile"
    commands = recipe.group(1).replace("\\\n", " ").splitlines()
    chain = next(c for c in commands if "mucrasp-deploy --profile" in c)
    return shlex.split(chain.strip())


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_make_demo_lets_the_planner_choose_a_ratio():
    args = _demo_chain_args()
    assert "--ratio" not in args, "make demo must not override the planner"
    workload = Workload(
        max_model_len=int(_option(args, "--max-model-len")),
        concurrency=int(_option(args, "--concurrency")),
        target_tokens_per_s=float(_option(args, "--target-tokens-per-s")),
    )
    weights = _option(args, "--weights")
    plan = plan_model(bundled_demo_model(), _option(args, "--profile"), workload, weights=weights, runtime="vllm")
    assert plan.ratio is not None and 0.2 <= plan.ratio <= 0.4, plan.message
    assert plan.weights == weights and plan.quantized, plan.message  # both levers
    unpruned = plan.rows[0]
    # The unpruned model fits the memory: the target is what it misses, and the chosen ratio meets it.
    assert unpruned.ratio == 0 and unpruned.fits and not unpruned.meets
    assert plan.chosen.meets and plan.chosen.decode_tokens_per_s >= workload.target_tokens_per_s
    # Quantizing alone is not enough here, so the pruning is not made moot by the format.
    free = plan_model(bundled_demo_model(), _option(args, "--profile"), workload, runtime="vllm")
    assert free.ratio and free.ratio > 0, free.message
    # This CPU's vLLM serves the format (it could not serve w4a16).
    from mucrasp.planning.weight_formats import FORMATS

    assert FORMATS[weights].cpu and FORMATS[weights].runtime == "vllm"
    # The context asked for fits the demo model: nothing is capped in the demo's smoke test.
    from mucrasp.serve.smoke import model_positions

    assert workload.max_model_len <= model_positions(bundled_demo_model())


def test_the_demo_profile_is_a_bundled_real_one():
    from mucrasp.planning.profiles import list_profiles

    args = _demo_chain_args()
    assert _option(args, "--profile") in list_profiles()
