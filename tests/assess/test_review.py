"""The reviewer in the loop: which cells are shown, what the verdicts make of a patient, what the review
costs, and the call rule chosen for a reviewer, against hand-worked tables."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.review import (
    FIRST_RANK,
    after_review,
    choose_call_for_reviewer,
    final_call,
    final_calls,
    first_parasitized_rank,
    patients_to_review,
    rank_cells,
    review_cells,
    review_workload,
)

# Patient A's cells, by hand: P = 0.9, 0.2, 0.7, 0.7 (labels U, P, U, P) rank 1, 4, 2, 3 (the tie in file
# order), so its first parasitized cell is the 4th row, rank 3. B: 0.1 (P) and 0.8 (U): ranks 2 and 1.
CELLS = pd.DataFrame(
    {
        "file": ["a1.png", "a2.png", "a3.png", "a4.png", "b1.png", "b2.png", "c1.png"],
        "patient": ["A", "A", "A", "A", "B", "B", "C"],
        "p_parasitized": [0.9, 0.2, 0.7, 0.7, 0.1, 0.8, 0.3],
        "truth": ["U", "P", "U", "P", "P", "U", "U"],
    }
)


def test_cells_rank_by_probability_within_their_patient_ties_in_file_order():
    assert rank_cells(CELLS, "patient", "p_parasitized").tolist() == [1, 4, 2, 3, 2, 1, 1]


def test_the_first_parasitized_rank_of_each_patient():
    ranks = first_parasitized_rank(
        CELLS, patient="patient", column="p_parasitized", is_positive=(CELLS["truth"] == "P").to_numpy()
    )
    assert ranks["A"] == 3 and ranks["B"] == 2 and np.isnan(ranks["C"])


PATIENTS = pd.DataFrame(
    {
        "patient": ["A", "B", "C"],
        "cells": [4, 2, 1],
        "fraction": [0.4, 0.3, 0.0],
        "fraction_low": [0.1, 0.0, 0.0],
        "fraction_high": [0.8, 0.9, 0.5],
        "healthy_chance": [0.02, 0.3, 1.0],
        "call": ["review", "positive", "negative"],
    }
)


def test_the_queue_holds_the_review_patients_and_with_confirm_positive_the_positive_ones():
    assert patients_to_review(PATIENTS, confirm_positive=False)["patient"].tolist() == ["A"]
    assert patients_to_review(PATIENTS, confirm_positive=True)["patient"].tolist() == ["A", "B"]
    none_classified = PATIENTS.assign(cells=[0, 2, 1])  # a patient whose files all failed: nothing to show
    assert patients_to_review(none_classified, confirm_positive=False).empty


def test_the_queue_shows_each_patients_top_cells_ranked_with_its_summary():
    queue = review_cells(
        CELLS,
        patients_to_review(PATIENTS, confirm_positive=True),
        patient="patient",
        column="p_parasitized",
        per_patient=3,
    )
    assert queue[["patient", "file", "rank"]].values.tolist() == [
        ["A", "a1.png", 1],
        ["A", "a3.png", 2],
        ["A", "a4.png", 3],
        ["B", "b2.png", 1],
        ["B", "b1.png", 2],
    ]
    assert queue["call"].tolist() == ["review"] * 3 + ["positive"] * 2
    assert queue["patient_cells"].tolist() == [4, 4, 4, 2, 2]
    assert queue["fraction_high"].tolist() == [0.8, 0.8, 0.8, 0.9, 0.9]
    with pytest.raises(ValueError, match=r"review\.cells_per_patient is 0"):
        review_cells(CELLS, PATIENTS, patient="patient", column="p_parasitized", per_patient=0)


def verdicts(*rows):
    return pd.DataFrame(rows, columns=["rank", "verdict", "verdicts"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # one confirmed parasitized cell among uninfected ones: positive
        (verdicts((1, "Uninfected", ""), (2, "Parasitized", ""), (3, "Uninfected", "")), "positive"),
        # every shown cell uninfected: negative
        (verdicts((1, "Uninfected", ""), (2, "Uninfected", ""), (3, "Uninfected", "")), "negative"),
        # an Unsure: still review
        (verdicts((1, "Uninfected", ""), (2, "Unsure", ""), (3, "Uninfected", "")), "review"),
        # a cell not reviewed yet: still review
        (verdicts((1, "Uninfected", ""), (2, "Uninfected", "")), "review"),
        # reviewers who disagree keep it in review, even beside a confirmed cell
        (verdicts((1, "Parasitized", ""), (2, None, "ann Parasitized; bob Uninfected")), "review"),
    ],
)
def test_the_final_call_of_a_reviewed_patient(given, expected):
    assert final_call(3, given)[0] == expected


def test_the_reasons_say_what_the_reviewers_did():
    assert final_call(3, verdicts((1, "Uninfected", ""), (2, "Unsure", "")))[1] == (
        "1 of 3 cells judged Uninfected, 1 Unsure, 1 not reviewed yet"
    )
    assert final_call(2, verdicts((2, None, "ann Parasitized; bob Uninfected")))[1] == (
        "reviewers disagree on cell 2 (ann Parasitized; bob Uninfected)"
    )
    assert final_call(3, verdicts((1, "Uninfected", ""), (3, "Parasitized", "")))[1] == (
        "cell 3 of 3 confirmed Parasitized"
    )
    assert final_call(3, verdicts((1, "Parasitized", ""), (3, "Parasitized", "")))[1] == (
        "cells 1, 3 of 3 confirmed Parasitized"
    )
    assert final_call(6, verdicts())[1] == "not reviewed yet: 6 cells shown"


def test_final_calls_keep_the_models_call_unless_reviewed_and_name_who_decided():
    queue = pd.DataFrame(
        {"patient": ["A", "A", "B", "B"], "task_key": ["q/A", "q/A", "q/B", "q/B"], "rank": [1, 2, 1, 2]}
    )
    reviewed = pd.DataFrame(
        {
            "task_key": ["q/A", "q/A", "q/B", "q/B", "q/B"],
            "rank": [1, 2, 1, 2, 2],
            "verdict": ["Uninfected", "Uninfected", "Parasitized", "Uninfected", "Unsure"],
            "reviewer": ["ann", "ann", "bob", "bob", "ann"],
        }
    )
    table = final_calls(PATIENTS, queue, reviewed).set_index("patient")
    # A: both shown cells judged uninfected by ann; B: bob confirms cell 1 (cell 2's disagreement, bob
    # Uninfected against ann Unsure, keeps it in review); C: not queued, the model's call
    assert table.loc["A", ["model_call", "final_call", "decided_by"]].tolist() == [
        "review",
        "negative",
        "ann",
    ]
    assert table.loc["B", ["model_call", "final_call", "decided_by"]].tolist() == [
        "positive",
        "review",
        "nobody yet",
    ]
    assert table.loc["B", "reason"] == "reviewers disagree on cell 2 (bob Uninfected; ann Unsure)"
    assert table.loc["C", ["model_call", "final_call", "decided_by", "cells_shown"]].tolist() == [
        "negative",
        "negative",
        "model",
        0,
    ]
    agreed = reviewed.iloc[:4]  # without ann's Unsure: bob's confirmed cell decides
    table = final_calls(PATIENTS, queue, agreed).set_index("patient")
    assert table.loc["B", ["final_call", "decided_by", "cells_reviewed"]].tolist() == ["positive", "bob", 2]


# Six patients of 100 cells (a with_truth table): three infected, their first parasitized cell at rank
# 1, 2 and 4; three uninfected. Worked by hand for the grid healthy_below [0.001, 0.0001] ×
# negative_below [0.002, 0.005, 0.01], a reviewer reading the top 4 cells:
#  healthy_below 0.001 calls U1 (chance 0.0005) positive: never chosen while another rule is safe.
#  healthy_below 0.0001 calls P1 positive and
#    negative_below 0.002: U2 negative; P2, P3, U1, U3 to review: cells read 2 + 4 + 4 + 4 = 14 (P3's
#      parasite at rank 4), 14 / 6 = 2.33 per patient; none missed;
#    negative_below 0.005: P3, U2, U3 negative; P2, U1 to review: 2 + 4 = 6, 1.0 per patient; P3 missed;
#    negative_below 0.01: none to review, 0 cells; P2 and P3 missed.
TABLE = pd.DataFrame(
    {
        "patient": ["P1", "P2", "P3", "U1", "U2", "U3"],
        "cells": [100] * 6,
        "fraction": [0.10, 0.008, 0.003, 0.006, 0.0, 0.003],
        "healthy_chance": [1e-5, 0.05, 0.5, 0.0005, 0.6, 0.3],
        "observed": [0.12, 0.05, 0.04, 0.045, 0.02, 0.03],
        "infected": [True, True, True, False, False, False],
        "labelled_fraction": [0.1, 0.02, 0.01, 0.0, 0.0, 0.0],
        "covered": [True] * 6,
        FIRST_RANK: [1.0, 2.0, 4.0, np.nan, np.nan, np.nan],
    }
)
GRID = ([0.001, 0.0001], [0.002, 0.005, 0.01])


@pytest.mark.parametrize(
    ("budget", "expected", "cells", "missed"),
    [(3.0, 0.002, 14 / 6, 0), (1.0, 0.005, 1.0, 1), (0.5, 0.01, 0.0, 2)],
)
def test_the_rule_for_a_reviewer_misses_fewest_infected_within_the_cell_budget(
    budget, expected, cells, missed
):
    rule, chosen = choose_call_for_reviewer(
        TABLE, *GRID, cells_per_patient=4, max_cells_per_patient=budget, min_cells=50
    )
    assert (rule.healthy_below, rule.negative_below) == (0.0001, expected)
    assert chosen["meets"] and chosen["false_positives"] == 0
    assert chosen["after_review"]["cells_read_per_patient"] == pytest.approx(cells)
    assert chosen["after_review"]["missed"] == missed


def test_between_rules_that_miss_as_few_the_reviewer_rule_is_the_most_cautious_the_budget_allows():
    # Without P3: negative_below 0.002 reviews P2, U1, U3 (2 + 4 + 4 = 10 cells of 5 patients, 2.0),
    # 0.005 reviews P2 and U1 (1.2); both miss none. Within 3 cells: 0.002, the one that reviews more.
    table = TABLE[TABLE["patient"] != "P3"]
    rule, chosen = choose_call_for_reviewer(table, *GRID, cells_per_patient=4, max_cells_per_patient=3.0)
    assert (rule.healthy_below, rule.negative_below) == (0.0001, 0.002)
    assert chosen["after_review"]["cells_read_per_patient"] == pytest.approx(2.0)
    # within 1.5 cells, 0.005 is the most cautious left
    rule, _ = choose_call_for_reviewer(table, *GRID, cells_per_patient=4, max_cells_per_patient=1.5)
    assert rule.negative_below == 0.005


def test_without_a_safe_rule_the_reviewer_rule_calls_fewest_healthy_positive():
    # a simulated healthy smear that every rule calls positive: 0.001 errs twice (U1 and it), 0.0001 once
    smears = pd.DataFrame(
        {"parasitemia": [0.0], "fraction": [0.0], "healthy_chance": [5e-5], "cells": [1000]}
    )
    rule, chosen = choose_call_for_reviewer(
        TABLE, *GRID, cells_per_patient=4, max_cells_per_patient=3.0, smears=smears
    )
    assert (rule.healthy_below, rule.negative_below) == (0.0001, 0.002)
    assert not chosen["meets"] and chosen["healthy_smears_positive"] == 1


def test_the_workload_of_a_reviewer_reading_the_top_k_cells():
    called = TABLE.assign(call=["positive", "review", "review", "review", "negative", "review"])
    by_k = {row["k"]: row for row in review_workload(called, [1, 4])}
    # k = 4: P2 (rank 2) and P3 (rank 4) found, U1 and U3 read in full: 2 + 4 + 4 + 4 = 14 of 16 shown
    assert by_k[4] | {"cells_read_per_patient": None, "cells_shown_per_patient": None} == {
        "k": 4,
        "patients": 6,
        "review_patients": 4,
        "call_sensitivity": 1.0,
        "call_specificity": 1.0,
        "undecided": 0,
        "missed": 0,
        "false_positives": 0,
        "cells_read_per_patient": None,
        "cells_shown_per_patient": None,
        "manual_cells_per_patient": 100.0,
    }
    assert by_k[4]["cells_read_per_patient"] == pytest.approx(14 / 6)
    assert by_k[4]["cells_shown_per_patient"] == pytest.approx(16 / 6)
    # k = 1: only the top cell of each: P2 and P3 missed, one cell read per review patient
    assert by_k[1]["missed"] == 2 and by_k[1]["call_sensitivity"] == pytest.approx(1 / 3)
    assert by_k[1]["cells_read_per_patient"] == pytest.approx(4 / 6)


def test_a_review_patient_without_a_classified_cell_stays_undecided():
    called = TABLE.assign(call=["positive", "review", "negative", "negative", "negative", "negative"])
    called.loc[1, "cells"] = 0
    after = after_review(called, 6)
    assert after["final_call"].tolist()[:2] == ["positive", "review"] and after["cells_read"].sum() == 0
    assert review_workload(called, [6])[0]["undecided"] == 1


def test_out_of_fold_each_fold_is_called_by_the_reviewer_rule_the_other_fold_chooses():
    from malaria_pipeline.assess.out_of_fold import call_out_of_fold

    # Fold 1: P1, P2, U1; fold 2: P3, U2, U3. Worked by hand at 1 cell per patient, reading 4:
    #  fold 2 chooses for fold 1: negative_below 0.002 reads 8 cells of 3 patients, over; 0.005 and 0.01
    #    read none and miss P3 alike: the lower, 0.005 (healthy_below 0.0001: both safe, the lower);
    #  fold 1 chooses for fold 2: 0.001 calls U1 positive; 0.002 and 0.005 read 6 of 3, over; 0.01.
    table = TABLE.assign(fold=[1, 1, 2, 1, 2, 2])
    called, _ = call_out_of_fold(
        table, *GRID, 0.05, 0.1, 50, reviewer={"cells_per_patient": 4, "max_cells_per_patient": 1.0}
    )
    called = called.set_index("patient")
    assert called.loc[["P1", "P2", "U1"], "negative_below"].tolist() == [0.005] * 3
    assert called.loc[["P3", "U2", "U3"], "negative_below"].tolist() == [0.01] * 3
    assert called["call"].to_dict() == {
        "P1": "positive",
        "P2": "review",
        "P3": "negative",
        "U1": "review",
        "U2": "negative",
        "U3": "negative",
    }
