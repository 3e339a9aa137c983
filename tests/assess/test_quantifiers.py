"""The quantifiers of mlquantify as the patient comparison calls them: ACC and PACC against their formulas
worked out by hand, the others against the library's own call, and the out-of-fold comparison."""

import numpy as np
import pandas as pd
import pytest
from mlquantify.likelihood import EMQ
from mlquantify.matching import HDy, KDEyML

from malaria_pipeline.assess.quantifiers import QUANTIFIERS, compare_quantifiers, estimate_fraction

RNG = np.random.default_rng(0)
Y_REF = RNG.integers(0, 2, 600)
P_REF = np.clip(Y_REF * 0.7 + RNG.normal(0.15, 0.12, 600), 0, 1)
Y_PATIENT = np.r_[np.ones(12, int), np.zeros(88, int)]
P_PATIENT = np.clip(Y_PATIENT * 0.7 + RNG.normal(0.15, 0.12, 100), 0, 1)


def test_acc_is_rogan_gladen_from_the_reference_counts():
    se = (P_REF[Y_REF == 1] >= 0.5).mean()
    fpr = (P_REF[Y_REF == 0] >= 0.5).mean()
    by_hand = ((P_PATIENT >= 0.5).mean() - fpr) / (se - fpr)
    assert estimate_fraction("ACC", P_PATIENT, P_REF, Y_REF, 0.5) == pytest.approx(by_hand, abs=1e-12)


def test_pacc_is_the_same_correction_with_mean_probabilities():
    tpr, fpr = P_REF[Y_REF == 1].mean(), P_REF[Y_REF == 0].mean()
    by_hand = (P_PATIENT.mean() - fpr) / (tpr - fpr)
    assert estimate_fraction("PACC", P_PATIENT, P_REF, Y_REF, 0.5) == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize("library", [EMQ, HDy, KDEyML])
def test_the_others_are_the_librarys_own_call(library):
    scores = np.column_stack([1 - P_PATIENT, P_PATIENT])
    reference = np.column_stack([1 - P_REF, P_REF])
    expected = np.asarray(library().aggregate(scores, reference, Y_REF))[1]
    assert estimate_fraction(library.__name__, P_PATIENT, P_REF, Y_REF, 0.5) == pytest.approx(expected)
    assert 0.0 <= expected <= 0.3  # 12% parasitized: a sane estimate, so the call was the right one


def test_an_unknown_quantifier_is_named_with_the_known_ones():
    with pytest.raises(
        ValueError, match="Quantifier 'SLD' is unknown: give one of ACC, PACC, EMQ, HDy, KDEyML"
    ):
        estimate_fraction("SLD", P_PATIENT, P_REF, Y_REF, 0.5)
    assert QUANTIFIERS == ("ACC", "PACC", "EMQ", "HDy", "KDEyML")


def test_each_folds_patients_are_estimated_with_the_other_folds_cells():
    folds = np.r_[np.ones(300, int), np.full(300, 2)]
    predictions = pd.DataFrame(
        {
            "fold": folds,
            "patient_id": np.where(np.arange(600) % 2, "odd", "even") + folds.astype(str),
            "label": np.where(Y_REF == 1, "Parasitized", "Uninfected"),
            "p_parasitized": P_REF,
        }
    )
    rows = compare_quantifiers(
        predictions, positive="Parasitized", count_at=0.5, methods=["ACC"], resamples=20, level=0.9, seed=1
    ).set_index("patient_id")
    assert len(rows) == 4 and set(rows["method"]) == {"ACC"}
    patient = predictions[predictions["patient_id"] == "even1"]
    others = predictions[predictions["fold"] == 2]
    expected = estimate_fraction(
        "ACC",
        patient["p_parasitized"].to_numpy(),
        others["p_parasitized"].to_numpy(),
        (others["label"] == "Parasitized").to_numpy(),
        0.5,
    )
    assert rows.loc["even1", "fraction"] == pytest.approx(expected)
    assert rows.loc["even1", "labelled_fraction"] == pytest.approx((patient["label"] == "Parasitized").mean())
    assert (rows["fraction_low"] <= rows["fraction"] + 1e-9).all() and (
        rows["fraction"] <= rows["fraction_high"] + 1e-9
    ).all()
