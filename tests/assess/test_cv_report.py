"""Cross-validation's report, against numbers worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.cv_report import by_target


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
