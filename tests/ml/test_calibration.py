"""Temperature scaling, against the NLL minimised by scipy on numpy (not the code under test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from malaria_pipeline.ml.calibration import fit_temperature


def _nll(temperature: float, logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def _overconfident(n=400, true_temperature=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / 2.5): calibrated at T = 2.5, overconfident at 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, 2))
    p = np.exp(log_softmax(logits / true_temperature, axis=1))
    labels = (rng.random(n) < p[:, 1]).astype(np.int64)
    return logits, labels


def test_the_fitted_temperature_minimises_the_nll_as_scipy_finds_it():
    logits, labels = _overconfident()
    expected = minimize_scalar(
        _nll, bounds=(0.05, 20), args=(logits, labels), method="bounded", options={"xatol": 1e-7}
    ).x
    fitted = fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert fitted == pytest.approx(expected, rel=1e-3)
    assert 1.8 < fitted < 3.5  # near the temperature the labels were drawn with
    assert _nll(fitted, logits, labels) < _nll(1.0, logits, labels)


def test_underconfident_logits_get_a_temperature_below_one():
    logits, labels = _overconfident(true_temperature=0.5, seed=1)
    expected = minimize_scalar(
        _nll, bounds=(0.05, 20), args=(logits, labels), method="bounded", options={"xatol": 1e-7}
    ).x
    assert fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(
        expected, rel=1e-3
    )
    assert expected < 1


def test_separable_logits_get_a_sharper_temperature_within_bounds_and_no_images_are_refused():
    # every image right: the NLL falls as T falls, towards 0; the fit sharpens, and stays positive
    logits = np.array([[3.0, -3.0], [-2.0, 2.0]])
    fitted = fit_temperature(torch.from_numpy(logits), torch.tensor([0, 1]))
    assert (
        0.01 <= fitted < 1
        and _nll(fitted, logits, np.array([0, 1])) < _nll(1.0, logits, np.array([0, 1])) / 100
    )
    with pytest.raises(ValueError, match="validation subset is empty"):
        fit_temperature(torch.empty((0, 2)), torch.empty(0, dtype=torch.int64))
