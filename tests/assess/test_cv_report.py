"""Cross-validation's report, against numbers worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.cv_report import by_target, patient_report


def test_a_fold_without_an_operating_threshold_is_left_out_of_the_targets_means():
    # As cv_operating_points reads back from its CSV: fold 3's validation patients were of one class (NaN).
    points = pd.DataFrame(
        {
            "fold": [1, 2, 3],
            "tta": [False] * 3,
            "target_sensitivity": [0.96] * 3,
            "threshold": [0.3, 0.5, np.nan],
            "sensitivity": [0.95, 0.97, np.nan],
            "specificity": [0.94, 0.90, np.nan],
        }
    )
    (row,) = by_target(points)
    assert row["sensitivity"] == {
        "mean": pytest.approx(0.96),
        "std": pytest.approx(np.std([0.95, 0.97], ddof=1)),
        "folds": 2,
    }
    assert row["specificity"]["mean"] == pytest.approx(0.92) and row["median_threshold"] == pytest.approx(0.4)


PATIENTS = {
    "level": 0.95,
    "min_fraction": 0.05,
    "count_at": 0.5,
    "choose_from": {"healthy_below": [0.01, 0.001], "negative_below": [0.02]},
    "max_review": 0.1,
    "call": {"healthy_below": 0.5, "negative_below": 0.5, "min_cells": 10},
    "budget": "patients",
    "detection": {"cells": 20},
}


def _called(fractions, chances, labelled, fold):
    """A fold's judged patients (or smears) of 20 cells each, as the out-of-fold table holds them."""
    n = len(fractions)
    table = pd.DataFrame(
        {
            "patient": [f"F{fold}P{i}" for i in range(n)],
            "fold": fold,
            "cells": 20,
            "observed": fractions,
            "fraction": fractions,
            "fraction_low": [max(f - 0.05, 0.0) for f in fractions],
            "fraction_high": [f + 0.05 for f in fractions],
            "healthy_chance": chances,
            "labelled_fraction": labelled,
            "healthy_below": 0.01,
            "negative_below": 0.02,
        }
    )
    return table.assign(
        infected=table["labelled_fraction"] > 0,
        covered=lambda t: (t.fraction_low <= t.labelled_fraction) & (t.labelled_fraction <= t.fraction_high),
        call="review",
    )


def test_the_recommended_rule_is_chosen_with_the_smears_and_the_configured_min_cells():
    # Each fold: one infected patient of chance 0.005 (positive below 0.01, review below 0.001) and three
    # healthy ones (fraction 0, negative). At healthy_below 0.001 a quarter of the patients go to review,
    # over max_review 0.1; at 0.01 none, but one healthy smear (chance 0.005) is then called positive. So
    # no rule meets every bound, and the one of fewest errors is 0.001, with its 20-cell patients decided
    # because min_cells is 10 (at 50, every patient would be in review).
    patients = pd.concat(
        [
            _called([0.3, 0.0, 0.0, 0.0], [0.005, 0.9, 0.9, 0.9], [0.3, 0.0, 0.0, 0.0], fold)
            for fold in (1, 2)
        ],
        ignore_index=True,
    )
    smears = pd.concat(
        [
            _called([0.05, 0.0], [0.005, 0.9], [0.0, 0.0], 1).assign(parasitemia=0.0, resampled=False),
            _called([0.0], [0.9], [0.0], 2).assign(parasitemia=0.0, resampled=False),
        ],
        ignore_index=True,
    )
    methods = {"count_at": 0.5, "thresholds": [], "quantifiers": []}
    report = patient_report(patients, smears, methods, PATIENTS)
    assert report["recommended_call"] == {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 10}
    chosen = report["recommended_call_on_all"]
    assert chosen["healthy_smears_positive"] == 0 and chosen["review_share"] == 0.25 and not chosen["meets"]
