"""What a model trained on every patient takes from cross-validation: the out-of-fold cells of all folds
pooled (reference counts, spread between patients, counting threshold) and the recommended call rule,
checked against counts made by hand."""

import pandas as pd
import pytest

from malaria_pipeline.assess.out_of_fold import pooled_patient_settings
from malaria_pipeline.assess.patient_call import PatientCall

RULE = PatientCall(healthy_below=0.0001, negative_below=0.03, min_cells=1)


def cells(patient, fold, threshold, *groups):
    """``groups``: (label, P(Parasitized), count); each fold at its own operating threshold."""
    rows = [(label, p) for label, p, count in groups for _ in range(count)]
    return pd.DataFrame(
        {
            "patient_id": patient,
            "fold": fold,
            "label": [label for label, _ in rows],
            "p_parasitized": [p for _, p in rows],
            "operating_threshold": threshold,
        }
    )


PARASITIZED, UNINFECTED = "Parasitized", "Uninfected"
# At 0.5: A 9 of 10 parasitized found, 1 of 20 uninfected an alarm; B no alarm in 15; C 4 of 5 found, 2
# alarms of 20 (at P 0.6: none of them at 0.65).
PREDICTIONS = pd.concat(
    [
        cells(
            "A",
            1,
            0.5,
            (PARASITIZED, 0.9, 9),
            (PARASITIZED, 0.2, 1),
            (UNINFECTED, 0.7, 1),
            (UNINFECTED, 0.1, 19),
        ),
        cells("B", 2, 0.9, (UNINFECTED, 0.1, 15)),
        cells(
            "C",
            2,
            0.9,
            (PARASITIZED, 0.8, 4),
            (PARASITIZED, 0.3, 1),
            (UNINFECTED, 0.6, 2),
            (UNINFECTED, 0.05, 18),
        ),
    ],
    ignore_index=True,
)


def settings(count_at=0.5, operating_threshold=0.5, run_id="abc123"):
    return pooled_patient_settings(
        PREDICTIONS,
        positive=PARASITIZED,
        count_at=count_at,
        quantifier="ACC",
        healthy_range="all",
        rule=RULE,
        operating_threshold=operating_threshold,
        run_id=run_id,
    )


def test_the_settings_are_the_pooled_counts_of_every_fold_and_the_recommended_rule():
    stored = settings()
    assert set(stored) == {
        "reference_cells",
        "count_threshold",
        "patient_spread",
        "quantifier",
        "patient_call",
    }
    reference, spread = stored["reference_cells"], stored["patient_spread"]
    # 15 parasitized and 55 uninfected cells of the three patients, both folds together
    assert (reference["positives"], reference["negatives"]) == (15, 55)
    truth = (PREDICTIONS["label"] == PARASITIZED).to_numpy()
    p = PREDICTIONS["p_parasitized"].to_numpy()
    for i, threshold in enumerate(reference["thresholds"]):  # the ROC counts, read again with numpy
        assert (
            reference["found"][i] == ((p >= threshold) & truth).sum()
            and reference["false_alarms"][i] == ((p >= threshold) & ~truth).sum()
        )
    assert stored["count_threshold"] == 0.5 and spread["threshold"] == 0.5
    # at 0.5: 1 + 0 + 2 alarms of 20 + 15 + 20 uninfected cells; 9 + 4 of 10 + 5 parasitized found
    assert (spread["false_alarm"]["events"], spread["false_alarm"]["cells"]) == (3, 55)
    assert spread["false_alarm"]["patients"] == 3
    assert (spread["detection"]["events"], spread["detection"]["cells"], spread["detection"]["patients"]) == (
        13,
        15,
        2,
    )
    assert stored["patient_call"] == {"healthy_below": 0.0001, "negative_below": 0.03, "min_cells": 1}
    assert stored["quantifier"] == "ACC"
    expected = "the pooled out-of-fold cells of cross-validation run abc123 (70 cells of 3 patients)"
    assert reference["source"] == spread["source"] == expected


def test_counting_at_the_operating_threshold_counts_every_fold_at_the_models_median_one():
    stored = settings(count_at="operating", operating_threshold=0.65)
    # not fold 1's 0.5 nor fold 2's 0.9: at 0.65, A's one alarm (0.7) counts and C's two (0.6) do not
    assert stored["count_threshold"] == 0.65
    assert stored["patient_spread"]["false_alarm"]["events"] == 1
    assert stored["patient_spread"]["detection"]["events"] == 13


def test_without_a_run_id_the_source_names_cross_validation_alone_and_a_quantifier_other_than_acc_is_refused():
    assert settings(run_id=None)["reference_cells"]["source"].startswith(
        "the pooled out-of-fold cells of cross-validation (70 cells"
    )
    with pytest.raises(ValueError, match="patients.quantifier is 'EMQ'"):
        pooled_patient_settings(
            PREDICTIONS,
            positive=PARASITIZED,
            count_at=0.5,
            quantifier="EMQ",
            healthy_range="all",
            rule=RULE,
            operating_threshold=None,
            run_id=None,
        )
