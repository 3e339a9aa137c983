"""A fold's figures on its held-out cells, against numbers worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.folds import fold_metrics

PARAMS = {
    "positive_class": "Parasitized",
    "threshold": 0.5,
    "calibration_bins": 10,
    "specificity_targets": [0.9, 0.99],
}


def test_the_calibration_error_of_each_fold_is_the_binned_gap_worked_out_by_hand():
    # One fold of 4 cells in the bins of 10: confidences 0.95, 0.95 (bin 10), 0.65 (bin 7), 0.55 (bin 6).
    cells = pd.DataFrame(
        {
            "label": ["Parasitized", "Uninfected", "Parasitized", "Uninfected"],
            "p_parasitized": [0.95, 0.95, 0.65, 0.45],
            "p_parasitized_uncalibrated": [0.99, 0.99, 0.99, 0.01],
            "operating_threshold": 0.6,
            "temperature": 2.0,
            "fold": 1,
            "path": list("abcd"),
            "patient_id": "P",
        }
    )
    metrics = fold_metrics(cells, PARAMS)
    # bin 10: 2 cells, accuracy 1/2, confidence 0.95; bin 7: accuracy 1, 0.65; bin 6: accuracy 1, 0.55.
    assert metrics["ece"] == pytest.approx(2 / 4 * 0.45 + 1 / 4 * 0.35 + 1 / 4 * 0.45)
    # uncalibrated: bin 10 holds all four, accuracy 3/4, confidence 0.99.
    assert metrics["ece_uncalibrated"] == pytest.approx(0.24)
    # at 0.6: called a, b, c: sensitivity 2/2, specificity 1/2 (d passed), accuracy 3/4.
    assert (
        metrics["sensitivity_at_operating_point"],
        metrics["specificity_at_operating_point"],
        metrics["accuracy_at_operating_point"],
    ) == pytest.approx((1.0, 0.5, 0.75))
    no_point = fold_metrics(cells.assign(operating_threshold=np.nan), PARAMS)
    assert no_point["sensitivity_at_operating_point"] is None and no_point["ece"] == metrics["ece"]
