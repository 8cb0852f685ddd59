"""MuCRASP's refit discount: the fraction of a unit's output that reconstruction cannot restore."""

import pytest
import torch

from mucrasp.errors import MucraspError
from mucrasp.scoring import ScoringContext, get_method
from mucrasp.scoring.refit_discount import channel_fractions, group_fractions, unrecoverable_fractions
from tests.test_reconstruction import KEPT_CHANNELS, _batches, _redundant_model


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    return x.T @ x


def _residual_energy(x: torch.Tensor, weight: torch.Tensor, cols: slice) -> float:
    """Brute force: the output energy of W_G x_G left after regressing x_G on the other inputs and a constant."""
    keep = torch.ones(x.shape[1], dtype=torch.bool)
    keep[cols] = False
    basis = torch.cat([x[:, keep], torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    target = x[:, cols]
    residual = target - basis @ (torch.linalg.pinv(basis) @ target)  # pinv: the basis is rank-deficient
    return float((residual @ weight[:, cols].T).pow(2).sum()) / float((target @ weight[:, cols].T).pow(2).sum())


def test_group_and_channel_fractions_match_least_squares_by_brute_force():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=generator, dtype=torch.float64)
    x[:, 5] = 2 * x[:, 1] - x[:, 2]  # fully predictable
    x[:, 9] = 3.0 + 0.5 * x[:, 9] + 0.5 * x[:, 0]  # a constant offset the intercept takes
    weight = torch.randn(7, 12, generator=generator, dtype=torch.float64)
    ridge = 1e-9
    channels = channel_fractions(_gram(x), ridge)
    assert channels[5] < 1e-6
    for j in (0, 3, 9):
        assert channels[j] == pytest.approx(_residual_energy(x, weight, slice(j, j + 1)), rel=1e-4)
    groups = group_fractions(_gram(x), weight, 4, ridge)
    for g in range(3):
        assert groups[g] == pytest.approx(_residual_energy(x, weight, slice(4 * g, 4 * g + 4)), rel=1e-4)
    # A ridge prices a damped refit: it can only restore less.
    assert (channel_fractions(_gram(x), 1.0) >= channels - 1e-12).all()


def test_redundant_units_of_a_real_layer_are_free_and_the_others_are_not():
    model, adapter, _ = _redundant_model()
    fractions = unrecoverable_fractions(model, adapter, _batches(), ridge=1e-9)
    copies = model.config.intermediate_size - KEPT_CHANNELS
    for mlp, attn in zip(fractions.mlp, fractions.attn):
        assert mlp.shape == (model.config.intermediate_size,) and attn.shape == (model.config.num_key_value_heads,)
        # channel k and its copy 256+k (0.7x) restore each other; group 1 duplicates group 0.
        assert float(mlp[:copies].max()) < 1e-6 and float(mlp[KEPT_CHANNELS:].max()) < 1e-6
        assert float(mlp[copies:KEPT_CHANNELS].min()) > 1e-3
        assert float(attn[:2].max()) < 1e-6


def test_mucrasp_with_a_refit_discount_lowers_exactly_the_recoverable_units():
    model, adapter, _ = _redundant_model()
    method = get_method("mucrasp")
    plain_context = ScoringContext(ratio=0.3, calibration=_batches(n=2))
    discounted_context = ScoringContext(ratio=0.3, calibration=_batches(n=2), options={"refit_discount": 1.0})
    plain = method.score(model, adapter, plain_context).values
    discounted_components = method.components(model, adapter, discounted_context)
    discounted = method.fuse(discounted_components, discounted_context).values
    fractions = discounted_components.unit_scores["unrecoverable"]
    for p, d, c in zip(plain.mlp, discounted.mlp, fractions.mlp):
        assert torch.allclose(d, p * c, rtol=1e-6, atol=0)
    with pytest.raises(MucraspError, match="score again with --set refit_discount"):
        method.fuse(method.components(model, adapter, plain_context), discounted_context)
