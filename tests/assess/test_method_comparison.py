"""The comparison of patient methods: a quantifier's figures against numbers worked out by hand, and the
same figures whatever floating-point noise sits on a tie."""

import pandas as pd
import pytest

from malaria_pipeline.assess.method_comparison import quantifier_figures


def _estimates(noise: float) -> pd.DataFrame:
    # Fold 1: two infected patients (fractions 0 and 0.3) and two uninfected ones, both estimated at 0, one
    # of them with ``noise`` on top (a fraction clipped to 0 that came out as 1.7e-16). Fold 2: an
    # uninfected patient labelled 0 whose interval starts at ``noise`` instead of 0.
    return pd.DataFrame(
        {
            "fold": [1, 1, 1, 1, 2, 2],
            "patient_id": list("abcdef"),
            "method": "PACC",
            "fraction": [0.0, 0.3, noise, 0.0, 0.0, 0.2],
            "fraction_low": [0.0, 0.2, 0.0, 0.0, noise, 0.1],
            "fraction_high": [0.1, 0.4, 0.1, 0.1, 0.1, 0.3],
            "labelled_fraction": [0.05, 0.25, 0.0, 0.0, 0.0, 0.25],
            "infected": [True, True, False, False, False, True],
        }
    )


def test_a_quantifiers_figures_are_the_ones_worked_out_by_hand_noise_or_not():
    for noise in (0.0, 1.7e-16, 5.6e-17):
        figures = quantifier_figures(_estimates(noise))
        (one, two) = figures["per_fold"]
        # Fold 1, pairs (infected, uninfected): (0, 0) tie 1/2 twice, (0.3, 0) won twice: 3/4.
        assert one["patient_roc_auc"] == pytest.approx(0.75)
        # Every labelled fraction within its interval; |0-0.05| + |0.3-0.25| over 4 patients.
        assert one["interval_coverage"] == 1.0 and one["fraction_mae"] == pytest.approx(0.1 / 4)
        # Fold 2: the uninfected patient's 0 lies on its lower bound, 0: covered; 0.25 in [0.1, 0.3].
        assert two["interval_coverage"] == 1.0 and two["patient_roc_auc"] == 1.0
        assert figures["pooled"]["interval_coverage"] == 1.0
        assert figures == quantifier_figures(_estimates(0.0))
