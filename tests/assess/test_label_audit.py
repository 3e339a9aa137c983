"""The label audit (cleanlab on out-of-fold probabilities) on hand-made predictions, and the choice of
images that training.exclude_label_issues leaves out."""

import pandas as pd
import pytest

from malaria_pipeline.assess.label_audit import excluded_paths, find_issues, summarize_issues


def predictions(p_parasitized, labels):
    count = len(labels)
    return pd.DataFrame(
        {
            "path": [f"cell_images/{label}/P{i % 3}_IMG_1_cell_{i}.png" for i, label in enumerate(labels)],
            "patient_id": [f"P{i % 3}" for i in range(count)],
            "fold": [1 + i % 2 for i in range(count)],
            "label": labels,
            "p_parasitized": p_parasitized,
        }
    )


def test_the_cells_whose_model_contradicts_their_label_are_flagged_worst_first():
    # 40 confident, agreeing cells of each class, and three whose out-of-fold model says the other class.
    p = [0.97] * 40 + [0.03] * 40 + [0.02, 0.04, 0.995]
    labels = ["Parasitized"] * 40 + ["Uninfected"] * 40 + ["Parasitized", "Parasitized", "Uninfected"]
    cells = predictions(p, labels)
    issues = find_issues(cells, "p_parasitized", "Parasitized")

    # Self-confidence, the probability of the given label, by hand: 1 - 0.995, then 0.02, then 0.04.
    assert issues["path"].tolist() == [cells["path"][82], cells["path"][80], cells["path"][81]]
    assert issues["p_given"].tolist() == pytest.approx([0.005, 0.02, 0.04])
    assert issues["label_quality"].tolist() == pytest.approx([0.005, 0.02, 0.04])
    assert issues["given_label"].tolist() == ["Uninfected", "Parasitized", "Parasitized"]
    assert issues["suggested_label"].tolist() == ["Parasitized", "Uninfected", "Uninfected"]
    assert issues["rank"].tolist() == [1, 2, 3]
    assert issues["patient_id"].tolist() == ["P1", "P2", "P0"] and issues["fold"].tolist() == [1, 1, 2]


def test_a_doubtful_cell_below_the_confidence_of_its_class_is_not_flagged():
    # Confident learning counts a cell as "really the other class" only when its probability of that
    # class reaches the mean probability that the other class's own cells get (here 0.97): 0.90 does not.
    p = [0.97] * 40 + [0.03] * 40 + [0.02, 0.10]
    labels = ["Parasitized"] * 40 + ["Uninfected"] * 40 + ["Parasitized", "Parasitized"]
    cells = predictions(p, labels)
    assert find_issues(cells, "p_parasitized", "Parasitized")["path"].tolist() == [cells["path"][80]]


def test_the_positive_class_may_be_either_class_index():
    p = [0.97] * 40 + [0.03] * 40 + [0.02]
    labels = ["Parasitized"] * 40 + ["Uninfected"] * 40 + ["Parasitized"]
    flipped = predictions([1 - x for x in p], labels).rename(columns={"p_parasitized": "p_uninfected"})
    issues = find_issues(flipped, "p_uninfected", "Uninfected")
    assert issues["path"].tolist() == [flipped["path"][80]] and issues["p_given"].tolist() == pytest.approx(
        [0.02]
    )


def test_the_summary_counts_flagged_cells_per_class_and_per_patient():
    cells = predictions(
        [0.9, 0.1, 0.2, 0.8, 0.3, 0.7],
        ["Parasitized", "Uninfected", "Parasitized", "Uninfected", "Uninfected", "Parasitized"],
    )
    issues = pd.DataFrame({"path": [cells["path"][2], cells["path"][3], cells["path"][5]]})
    summary = summarize_issues(cells, issues, "prune_by_noise_rate")
    assert summary["images"] == 6 and summary["flagged"] == 3 and summary["share"] == 0.5
    assert summary["by_given_label"] == {
        "Parasitized": {"images": 3, "flagged": 2, "share": 2 / 3},
        "Uninfected": {"images": 3, "flagged": 1, "share": 1 / 3},
    }
    # patients P0 (cells 0, 3), P1 (1, 4), P2 (2, 5): most flagged first, none-flagged left out
    assert summary["by_patient"] == [
        {"patient_id": "P2", "images": 2, "flagged": 2, "share": 1.0},
        {"patient_id": "P0", "images": 2, "flagged": 1, "share": 0.5},
    ]


def test_exclusion_needs_an_audit_of_these_images_and_names_what_to_run():
    paths = pd.Series(["a.png", "b.png", "c.png"])
    audit = pd.DataFrame({"path": ["b.png", "z.png"]})
    assert excluded_paths(audit, paths, exclude=False) == set()
    assert excluded_paths(audit, paths, exclude=True) == {"b.png"}
    with pytest.raises(ValueError, match="no label audit.*kedro run --pipelines cross_validation"):
        excluded_paths(audit.iloc[:0], paths, exclude=True)
    with pytest.raises(ValueError, match="None of the 1 images of the latest label audit"):
        excluded_paths(pd.DataFrame({"path": ["z.png"]}), paths, exclude=True)
