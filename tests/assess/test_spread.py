"""The spread of a rate between patients: a beta-binomial fitted by maximum likelihood, against SciPy's own
fit, against known parameters, and its tail against a sum written out term by term."""

import math

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import betaln

from malaria_pipeline.assess.spread import PatientSpread, RateSpread, fit_rate_spread


def test_with_equal_counts_the_fit_is_scipys_own_maximum_likelihood_fit():
    # scipy.stats.fit maximises the same likelihood by another optimiser, for one n shared by all.
    rng = np.random.default_rng(1)
    events = stats.betabinom.rvs(80, 2.0, 60.0, size=200, random_state=rng)
    fitted = fit_rate_spread(events, np.full(200, 80))

    def optimizer(fun, bounds, *, integrality):  # stats.fit's default, seeded and run to convergence
        return optimize.differential_evolution(fun, bounds, integrality=integrality, seed=0, tol=1e-12)

    reference = stats.fit(
        stats.betabinom,
        events,
        bounds={"n": (80, 80), "a": (0.01, 1000), "b": (0.01, 10000)},
        optimizer=optimizer,
    ).params
    assert fitted.a == pytest.approx(reference.a, rel=2e-3)
    assert fitted.b == pytest.approx(reference.b, rel=2e-3)
    assert (fitted.patients, fitted.cells, fitted.events) == (200, 16_000, int(events.sum()))


def test_patients_of_unequal_counts_give_back_the_spread_they_were_drawn_from():
    # 3,000 patients of 30 to 400 cells, rates ~ Beta(mean 0.03, rho 0.02): a = 1.47, b = 47.53.
    rng = np.random.default_rng(2)
    cells = rng.integers(30, 400, 3000)
    events = stats.betabinom.rvs(cells, 0.03 * 49, 0.97 * 49, random_state=rng)
    fitted = fit_rate_spread(events, cells)
    assert fitted.mean == pytest.approx(0.03, rel=0.05)
    assert fitted.rho == pytest.approx(0.02, rel=0.2)
    assert fitted.between_variance == pytest.approx(0.03 * 0.97 * 0.02, rel=0.25)


def test_one_binomial_rate_for_everyone_fits_a_spread_near_zero():
    rng = np.random.default_rng(3)
    fitted = fit_rate_spread(rng.binomial(200, 0.04, 500), np.full(500, 200))
    assert fitted.rho < 2e-3 and fitted.mean == pytest.approx(0.04, rel=0.05)


def test_a_rate_never_seen_is_kept_at_half_an_event_over_all_cells():
    fitted = fit_rate_spread(np.zeros(10), np.full(10, 50))
    assert fitted.mean == pytest.approx(0.5 / 500)


def test_the_chance_of_as_many_events_is_the_sum_of_the_beta_binomial_terms():
    spread = RateSpread(mean=0.03, rho=0.05, patients=1, cells=1, events=0)
    a, b, n = spread.a, spread.b, 120

    def pmf(j):  # C(n, j) B(j + a, n - j + b) / B(a, b), written out
        return math.comb(n, j) * math.exp(betaln(j + a, n - j + b) - betaln(a, b))

    for k in (0, 1, 4, 12, 40):
        assert spread.chance_of_at_least(k, n) == pytest.approx(
            sum(pmf(j) for j in range(k, n + 1)), rel=1e-9
        )
    one_rate = RateSpread(mean=0.03, rho=0.0, patients=1, cells=1, events=0)
    assert one_rate.chance_of_at_least(12, n) == pytest.approx(stats.binom.sf(11, n, 0.03), rel=1e-12)
    # a spread makes many alarms far more likely for a healthy patient than one rate does
    assert spread.chance_of_at_least(12, n) > 100 * one_rate.chance_of_at_least(12, n)


def test_each_patients_cells_are_counted_apart_by_class():
    # P1: 3 uninfected (1 called), 2 parasitized (2 called); P2: 4 uninfected (0 called), no parasitized.
    patients = np.array(["P1"] * 5 + ["P2"] * 4)
    positive = np.array([False, False, False, True, True, False, False, False, False])
    called = np.array([True, False, False, True, True, False, False, False, False])
    spread = PatientSpread.of(patients, positive, called, 0.5, "hand")
    assert spread.false_alarm == fit_rate_spread(np.array([1, 0]), np.array([3, 4]))
    assert spread.detection == fit_rate_spread(np.array([2]), np.array([2]))
    assert PatientSpread.from_dict(spread.as_dict()) == spread
    with pytest.raises(ValueError, match="all of one class"):
        PatientSpread.of(patients[:3], positive[:3], called[:3], 0.5, "hand")


def test_counts_out_of_range_or_no_patient_get_a_clear_message():
    with pytest.raises(ValueError, match="No patient has cells"):
        fit_rate_spread(np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="0 <= events <= cells"):
        fit_rate_spread(np.array([5]), np.array([3]))


def _grid_maximum(events: np.ndarray, cells: np.ndarray) -> tuple[float, float, float]:
    """The (mean, rho) of largest beta-binomial log-likelihood (SciPy's ``betabinom.logpmf``) on a grid over
    the fit's bounds, and that log-likelihood: a second maximisation, by brute force."""
    total = cells.sum()
    means = np.geomspace(0.5 / total, 0.5, 400)
    rhos = np.geomspace(1e-7, 0.5, 400)
    m, r = np.meshgrid(means, rhos, indexing="ij")
    scale = 1 / r - 1
    loglik = sum(
        stats.betabinom.logpmf(k, n, m * scale, (1 - m) * scale) for k, n in zip(events, cells, strict=True)
    )
    i, j = np.unravel_index(np.argmax(loglik), loglik.shape)
    return float(means[i]), float(rhos[j]), float(loglik[i, j])


def _loglik(spread: RateSpread, events: np.ndarray, cells: np.ndarray) -> float:
    return float(stats.betabinom.logpmf(events, cells, spread.a, spread.b).sum())


def test_without_false_alarms_the_fit_reaches_the_likelihoods_maximum_not_the_nearest_start():
    # No patient's uninfected cell called parasitized: the likelihood climbs to the largest spread (rho
    # 0.5), where one start from a small spread stays stuck on the flat.
    cells = np.array([40, 55, 70, 90, 120, 35, 60, 80, 100, 45])
    events = np.zeros_like(cells)
    fitted = fit_rate_spread(events, cells)
    mean, rho, best = _grid_maximum(events, cells)
    assert fitted.rho == pytest.approx(rho, rel=1e-6) and rho == pytest.approx(0.5)
    assert fitted.mean == pytest.approx(mean, rel=1e-6)
    assert _loglik(fitted, events, cells) >= best - 1e-9


def test_healthy_range_controls_fits_the_false_alarms_of_the_uninfected_patients_alone():
    # P1 is infected (10 parasitized cells) and its 30 uninfected cells show 9 false alarms; the controls
    # C1 to C4 show 0, 1, 2 and 1 in 40 each.
    alarms = {"P1": (9, 30), "C1": (0, 40), "C2": (1, 40), "C3": (2, 40), "C4": (1, 40)}
    patients, positive, called = [], [], []
    for patient, (k, n) in alarms.items():
        patients += [patient] * n
        positive += [False] * n
        called += [True] * k + [False] * (n - k)
    patients += ["P1"] * 10
    positive += [True] * 10
    called += [True] * 8 + [False] * 2
    spread = PatientSpread.of(
        np.array(patients), np.array(positive), np.array(called), 0.5, "hand", "controls"
    )
    controls = np.array([0, 1, 2, 1]), np.array([40, 40, 40, 40])
    assert (spread.false_alarm.patients, spread.false_alarm.cells, spread.false_alarm.events) == (4, 160, 4)
    mean, rho, best = _grid_maximum(*controls)
    assert spread.false_alarm.mean == pytest.approx(mean, rel=0.02)
    # the likelihood is flat in rho near 0 here: the optimiser stops within 1e-3 of the grid's maximum
    assert _loglik(spread.false_alarm, *controls) >= best - 1e-3
    everyone = PatientSpread.of(np.array(patients), np.array(positive), np.array(called), 0.5, "hand", "all")
    assert everyone.false_alarm.patients == 5 and everyone.false_alarm.mean > 2 * spread.false_alarm.mean
