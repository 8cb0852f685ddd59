"""MuCRASP: Multimodal Chain-of-thought Reasoning aware Structured Pruning.

Dutta & Aditya, "MuCRASP: Multimodal Chain-of-thought Reasoning aware Structured Pruning",
arXiv 2605.25842. No public code; this follows the formulas in DESIGN.md.

Scoring measures, in one gradient pass over the calibration set:
- A_global: unit Taylor attribution of the loss over all response tokens;
- A_pivot: the same with the loss restricted to tokens inside pivot windows;
- CMDS and Sens per layer (see `modality`).
Fusion happens per ratio (γ_dyn depends on S), so a scores file serves every ratio:
`v(u) = [(1−γ_dyn)·Ā_global(u) + γ_dyn·Ā_pivot(u)]·P(L_u)`, `γ_dyn = γ_base·(1−S)^ρ`, with Ā the
score divided by its mean per unit type (the paper's normalisation is unknown).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from pydantic import ConfigDict, Field

from mucrasp.calibration.batches import resolve_batches, summarize
from mucrasp.calibration.pivots import DEFAULT_MARKERS, PivotConfig
from mucrasp.errors import MucraspError
from mucrasp.reconstruction import ReconstructionSettings
from mucrasp.scoring.base import (
    ScoreComponents,
    ScoringContext,
    ScoringMethod,
    ScoringResult,
    flatten_depth_profile,
    normalize_per_unit_type,
)
from mucrasp.scoring.modality import ModalityStatistics, ProtectionConfig, protection, record_hidden_states
from mucrasp.scoring.options import method_config
from mucrasp.scoring.refit_discount import unrecoverable_fractions
from mucrasp.scoring.registry import register_method
from mucrasp.scoring.taylor_hooks import taylor_scores
from mucrasp.units import ATTN, MLP, UnitScores
from mucrasp.validation import JobConfig, StrTuple

# The paper's full form, protection included, with the strengths we first chose (the paper gives no
# values). Kept as a named preset: `--set` these to score the way the paper describes.
PAPER_STYLE = {"gamma_base": 0.5, "rho": 1.0, "alpha": 0.5, "beta": 0.5, "omega_early": 0.1, "omega_attention": 0.1}


class MucraspConfig(JobConfig):
    # The defaults are the paper's fusion with no layer protection, chosen on validation splits only
    # (`bench/results/quality-{demo,smollm}-validation.md`). Protection (PAPER_STYLE) lost on both
    # models: Sens favours the late layers, whose residual norms are largest, and starved the middle
    # ones (demo VLM at ratio 0.5: accuracy 0.730 / CoT KL 0.0221 with it, 0.780 / 0.0174 without).
    # Pivot-only attribution (γ = 1) was a little better on the demo VLM (0.785 / 0.0155), whose
    # pivot windows cover 72% of its CoT, but much worse on SmolLM2 (KL 0.76 against 0.63 at 0.3,
    # 2.53 against 1.79 at 0.5), whose windows cover 20%: too few tokens for a gradient on their own.
    model_config = ConfigDict(frozen=True)

    # Fusion (applied at prune time): γ_dyn = γ_base·(1−S)^ρ.
    gamma_base: float = Field(0.5, ge=0.0, le=1.0)
    rho: float = Field(1.0, ge=0.0)
    # Protection P(L) = 1 + α·norm(Sens) + β·norm(CMDS) + Ω (applied at prune time); zero: P = 1.
    alpha: float = Field(0.0, ge=0.0)
    beta: float = Field(0.0, ge=0.0)
    omega_early: float = Field(0.0, ge=0.0)
    omega_attention: float = Field(0.0, ge=0.0)
    # Depth profile (applied at prune time, before protection): each layer's values divided by
    # (layer mean / model mean) ** depth_balance, per unit type (`flatten_depth_profile`). Without it
    # the knapsack strips the demo VLM's last five layers to the floor at 0.6 and reconstruction cannot
    # repair them. 0.5 was chosen with reconstruction on (the default), on validation splits only
    # (`bench/results/quality-{demo,smollm}-depth*-validation.md`): demo accuracy 0.780 → 0.955 at 0.6
    # and 0.685 → 0.745 at 0.7; SmolLM2 CoT KL 0.138 → 0.121 at 0.3, 0.277 both at 0.5. 1.0 was worse
    # on SmolLM2 (0.133 at 0.3). One-shot without reconstruction it costs the demo VLM at 0.7.
    depth_balance: float = Field(0.5, ge=0.0, le=1.0)
    # Refit discount (measured at scoring time when > 0, applied at prune time): each unit's value times
    # c ** refit_discount, c the fraction of its output that reconstruction's refit cannot restore
    # (`refit_discount`). Our extension, not the paper's; 0 (off) until a validation split favours it.
    refit_discount: float = Field(0.0, ge=0.0, le=2.0)
    # Calibration (applied at scoring time)
    window: int = Field(8, ge=1)
    markers: StrTuple = DEFAULT_MARKERS
    fallback_interval: int = Field(20, ge=1)
    gradient_checkpointing: bool = False

    def pivots(self) -> PivotConfig:
        return PivotConfig(markers=tuple(self.markers), window=self.window, fallback_interval=self.fallback_interval)

    def protection(self) -> ProtectionConfig:
        return ProtectionConfig(self.alpha, self.beta, self.omega_early, self.omega_attention)


def is_vision_model(adapter) -> bool:
    return bool(getattr(adapter, "is_vision_language", False))


def gamma_dyn(ratio: float, config: MucraspConfig) -> float:
    return config.gamma_base * (1.0 - ratio) ** config.rho


@register_method
class MucraspMethod(ScoringMethod):
    name = "mucrasp"
    needs_calibration = True
    # The global knapsack with each layer's pruned share held within ±layer_deviation (0.2) of the ratio.
    # Chosen with reconstruction on, on validation splits only (`bench/results/quality-{demo,smollm}-bounded-
    # validation*.md`): SmolLM2 CoT KL 0.0744 → 0.0712 at 0.2, 0.1208 → 0.1106 at 0.3, 0.2772 → 0.2749 at 0.5;
    # demo VLM accuracy 0.955 → 0.995 at 0.6, 0.745 → 0.800 at 0.7, unchanged at 0.3 and 0.5. Tighter bounds
    # (λ 0, 0.05) did better still on SmolLM2 at 0.2 but lost the demo VLM at 0.6 and 0.7.
    default_layout = "global-bounded"
    citation = "Dutta & Aditya, MuCRASP, arXiv 2605.25842"
    config_class = MucraspConfig

    def components(self, model, adapter, context: ScoringContext) -> ScoreComponents:
        config = method_config(MucraspConfig, context.options, self.name)
        batches = resolve_batches(
            context.calibration, model.config, config.pivots(), is_vision_model(adapter), self.name
        )
        text_config = adapter.text_config(model.config)
        stats = ModalityStatistics(len(adapter.decoder_layers(model)), text_config.hidden_size)

        with record_hidden_states(model, adapter, stats):
            scores, memory = taylor_scores(
                model,
                adapter,
                batches,
                {"a_global": lambda b: b.response_mask, "a_pivot": lambda b: b.pivot_mask},
                checkpointing=config.gradient_checkpointing,
                progress=context.progress,
                before_forward=stats.start_sample,
            )
        unit_scores = dict(scores)
        if config.refit_discount > 0:
            unit_scores["unrecoverable"] = unrecoverable_fractions(
                model, adapter, batches, ReconstructionSettings().ridge, context.progress
            )
        summary = summarize(batches)
        details = {
            "calibration": summary.as_dict(),
            "scoring_options": {
                k: v
                for k, v in config.model_dump().items()
                if k in ("window", "fallback_interval", "gradient_checkpointing", "refit_discount")
            }
            | {"markers": list(config.markers)},
            "memory": memory,
        }
        return ScoreComponents(
            self.name,
            unit_scores,
            layer_stats={"cmds": stats.cmds(), "sens": stats.sens()},
            details=details,
        )

    def fuse(self, components: ScoreComponents, context: ScoringContext) -> ScoringResult:
        config = method_config(MucraspConfig, context.options, self.name)
        gamma = gamma_dyn(context.ratio, config)
        a_global = normalize_per_unit_type(components.unit_scores["a_global"])
        a_pivot = normalize_per_unit_type(components.unit_scores["a_pivot"])
        fused = UnitScores(
            [(1 - gamma) * g + gamma * p for g, p in zip(a_global.mlp, a_pivot.mlp)],
            [(1 - gamma) * g + gamma * p for g, p in zip(a_global.attn, a_pivot.attn)],
        )
        fused = flatten_depth_profile(fused, config.depth_balance)
        if config.refit_discount > 0:
            fused = _discount(fused, components, config.refit_discount)
        cmds, sens = components.layer_stats["cmds"], components.layer_stats["sens"]
        prot = protection(sens, cmds, config.protection())
        values = UnitScores(
            [v * float(prot[MLP][i]) for i, v in enumerate(fused.mlp)],
            [v * float(prot[ATTN][i]) for i, v in enumerate(fused.attn)],
        )
        details = dict(components.details) | {
            "gamma_dyn": gamma,
            "fusion": {
                "gamma_base": config.gamma_base,
                "rho": config.rho,
                "depth_balance": config.depth_balance,
                "refit_discount": config.refit_discount,
            },
            "protection_config": asdict(config.protection()),
            "per_layer": {
                "cmds": _rounded(cmds),
                "sens": _rounded(sens),
                "protection_mlp": _rounded(prot[MLP]),
                "protection_attn": _rounded(prot[ATTN]),
            },
        }
        return ScoringResult(values, details)


def _discount(values: UnitScores, components: ScoreComponents, exponent: float) -> UnitScores:
    fractions = components.unit_scores.get("unrecoverable")
    if fractions is None:
        raise MucraspError(
            "refit_discount needs the refit fractions, which these scores lack: score again with "
            "--set refit_discount=VALUE (any value above 0 measures them)"
        )
    return UnitScores(
        [v * c.double() ** exponent for v, c in zip(values.mlp, fractions.mlp)],
        [v * c.double() ** exponent for v, c in zip(values.attn, fractions.attn)],
    )


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in values]
