"""A person in the loop: the cells a reviewer looks at, what their verdicts make of a patient's call, and
what that review costs. No Kedro, no MLflow, no torch.

A patient called ``review`` goes to a microscopist. The review is cheap when the cells come ranked: the
reviewer sees the patient's cells of highest P(Parasitized) first, and one cell confirmed Parasitized makes
the patient positive. The queue (:func:`review_cells`) holds each review patient's
``cells_per_patient`` top-ranked cells; the verdicts (Parasitized, Uninfected, Unsure) come back per cell,
and :func:`final_calls` turns them into the patient's final call:

- at least one shown cell confirmed Parasitized (every verdict on it Parasitized): ``positive``;
- every shown cell judged Uninfected: ``negative``;
- otherwise the call stays ``review``, with the reason (cells not reviewed yet, Unsure, reviewers who
  disagree on a cell).

What the review costs, and what it gives, is measured with the archive's label standing for the reviewer's
eye (:func:`after_review`, :func:`review_workload`): a reviewer reads a review patient's ranked cells and
stops at the first parasitized one (the patient is then positive) or after ``k``. The call rule can then be
chosen for a reviewer (:func:`choose_call_for_reviewer`): within a budget of cells looked at per patient
overall, rather than a share of patients sent to review.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.patient_call import PatientCall, patient_metrics
from malaria_pipeline.assess.text import number

VERDICTS = ("Parasitized", "Uninfected", "Unsure")
POSITIVE_VERDICT, NEGATIVE_VERDICT, UNSURE = VERDICTS
# decided_by of a patient whose reviewers have not settled it yet.
UNDECIDED = "nobody yet"
# The column of a patient table (with_truth) that holds the rank of its first cell labelled parasitized.
FIRST_RANK = "first_parasitized_rank"


def rank_cells(cells: pd.DataFrame, patient: str, column: str) -> pd.Series:
    """Each cell's rank within its patient (1: the highest ``column``, P(Parasitized)); ties in file order
    (``cells`` as given), so that a queue is made the same way twice."""
    plain = pd.DataFrame(
        {"patient": cells[patient].astype(str).to_numpy(), "p": cells[column].to_numpy(dtype=float)}
    )
    order = plain.sort_values(["patient", "p"], ascending=[True, False], kind="stable")
    ranks = np.empty(len(cells), dtype=int)
    ranks[order.index.to_numpy()] = order.groupby("patient", sort=False).cumcount().to_numpy() + 1
    return pd.Series(ranks, index=cells.index)


def patients_to_review(patients: pd.DataFrame, confirm_positive: bool) -> pd.DataFrame:
    """The rows of a patient table (``patient``, ``call``, ``cells``) that go to the reviewer: every patient
    called ``review``, and with ``confirm_positive`` those called ``positive`` too; never one without a
    classified cell (there is nothing to show)."""
    calls = ["review", "positive"] if confirm_positive else ["review"]
    return patients[patients["call"].isin(calls) & (patients["cells"] > 0)]


def review_cells(
    cells: pd.DataFrame, patients: pd.DataFrame, *, patient: str, column: str, per_patient: int
) -> pd.DataFrame:
    """The cells a reviewer is shown: for each patient of ``patients`` (rows of a patient table), its
    ``per_patient`` cells of highest ``column``, ranked (column ``rank``, 1 first), with the patient's
    ``call``, ``fraction``, ``fraction_low``, ``fraction_high``, ``healthy_chance`` and ``cells`` beside
    each (``patient_cells``).

    Args:
        cells: one row per classified cell, with the patient in ``patient`` and P(Parasitized) in ``column``.
        patients: the patients to review (:func:`patients_to_review`).
        per_patient: cells shown per patient (``review.cells_per_patient``).
    """
    if per_patient < 1:
        raise ValueError(f"review.cells_per_patient is {per_patient!r}: give a number of cells, e.g. 6")
    chosen = cells[cells[patient].astype(str).isin(patients["patient"].astype(str))]
    ranked = chosen.assign(rank=rank_cells(chosen, patient, column))
    ranked = ranked[ranked["rank"] <= per_patient].sort_values([patient, "rank"], kind="stable")
    summary = patients.set_index(patients["patient"].astype(str))[
        ["call", "fraction", "fraction_low", "fraction_high", "healthy_chance", "cells"]
    ].rename(columns={"cells": "patient_cells"})
    return ranked.join(summary, on=ranked[patient].astype(str)).reset_index(drop=True)


def cell_verdicts(reviewed: pd.DataFrame) -> pd.DataFrame:
    """One row per reviewed cell (``task_key``, ``rank``) of the verdicts given on it (``verdict`` and
    ``reviewer``, one row per verdict): ``verdict`` the agreed one, or None where reviewers disagree (the
    verdicts then listed in ``verdicts``)."""
    if reviewed.empty:
        return pd.DataFrame(columns=["task_key", "rank", "verdict", "verdicts", "reviewers"])
    rows = []
    for (task, rank), given in reviewed.groupby(["task_key", "rank"], sort=True):
        distinct = sorted(set(given["verdict"]))
        rows.append(
            {
                "task_key": task,
                "rank": rank,
                "verdict": distinct[0] if len(distinct) == 1 else None,
                "verdicts": "; ".join(f"{r} {v}" for r, v in zip(given["reviewer"], given["verdict"])),
                "reviewers": ", ".join(sorted(set(given["reviewer"]))),
            }
        )
    return pd.DataFrame(rows)


def final_call(shown: int, verdicts: pd.DataFrame) -> tuple[str, str]:
    """A reviewed patient's final call and the reason, from the verdicts on the ``shown`` cells of its task
    (:func:`cell_verdicts` rows: ``rank``, ``verdict`` (None: reviewers disagree), ``verdicts``).

    Reviewers who disagree on a cell keep the call ``review`` whatever the other cells say: a second
    look, not a vote, settles it.
    """
    disputed = verdicts[verdicts["verdict"].isna()]
    if len(disputed):
        return "review", "reviewers disagree on " + "; ".join(
            f"cell {int(row.rank)} ({row.verdicts})" for row in disputed.itertuples()
        )
    confirmed = verdicts[verdicts["verdict"] == POSITIVE_VERDICT]
    if len(confirmed):
        ranks = ", ".join(str(int(r)) for r in confirmed["rank"])
        return (
            "positive",
            f"{'cells' if len(confirmed) > 1 else 'cell'} {ranks} of {shown} confirmed {POSITIVE_VERDICT}",
        )
    if verdicts.empty:
        return "review", f"not reviewed yet: {shown} cells shown"
    uninfected = int((verdicts["verdict"] == NEGATIVE_VERDICT).sum())
    if uninfected == shown:
        return "negative", f"all {shown} cells shown judged {NEGATIVE_VERDICT}"
    unsure = int((verdicts["verdict"] == UNSURE).sum())
    missing = shown - len(verdicts)
    reasons = [f"{uninfected} of {shown} cells judged {NEGATIVE_VERDICT}"]
    if unsure:
        reasons.append(f"{unsure} {UNSURE}")
    if missing:
        reasons.append(f"{missing} not reviewed yet")
    return "review", ", ".join(reasons)


def first_parasitized_rank(
    cells: pd.DataFrame, *, patient: str, column: str, is_positive: np.ndarray
) -> pd.Series:
    """Per patient, the rank (1: the highest ``column``) of its first cell labelled parasitized; NaN for a
    patient none of whose cells is."""
    ranks = rank_cells(cells, patient, column).to_numpy()
    positive = np.asarray(is_positive, dtype=bool)
    patients = cells[patient].astype(str).to_numpy()
    found = pd.Series(ranks[positive]).groupby(patients[positive]).min()
    every = pd.Index(sorted(cells[patient].astype(str).unique()), name=patient)
    return found.reindex(every).astype(float).rename(FIRST_RANK)


def with_first_ranks(
    table: pd.DataFrame, cells: pd.DataFrame, *, patient: str, column: str, is_positive: np.ndarray
) -> pd.DataFrame:
    """A patient table (``patient``) with :data:`FIRST_RANK` of its patients' ``cells``
    (:func:`first_parasitized_rank`)."""
    ranks = first_parasitized_rank(cells, patient=patient, column=column, is_positive=is_positive)
    return table.assign(**{FIRST_RANK: table["patient"].astype(str).map(ranks).astype(float)})


def after_review(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """A patient table (``call``, ``cells``, ``infected`` and :data:`FIRST_RANK`) after a reviewer read the
    top ``k`` cells of each ``review`` patient, with the archive's labels for the reviewer's eye: positive
    where a parasitized cell is among them, else negative. A patient without a classified cell stays
    ``review`` (undecided). Adds ``final_call`` and ``cells_read``: the cells the reviewer looked at,
    stopping at the first parasitized one (0 for a patient not reviewed).
    """
    review = (table["call"] == "review").to_numpy()
    shown = np.minimum(table["cells"].to_numpy(), k)
    rank = table[FIRST_RANK].to_numpy(dtype=float)
    found = review & (rank <= shown)
    final = np.where(found, "positive", np.where(review & (shown > 0), "negative", table["call"]))
    read = np.where(found, np.nan_to_num(rank), np.where(review, shown, 0)).astype(int)
    return table.assign(final_call=final, cells_read=read)


def review_workload(
    table: pd.DataFrame, ks: list[int], manual_cells: float | None = None
) -> list[dict[str, Any]]:
    """What a reviewer of the top ``k`` cells gives and costs, for each ``k``, on a patient table with the
    truth (:func:`~malaria_pipeline.assess.patients.with_truth`, with ``call`` and :data:`FIRST_RANK`):

    - ``call_sensitivity``, ``call_specificity``: of the final calls, over every infected and every
      uninfected patient (a patient left undecided counts against both);
    - ``undecided``: patients still ``review`` after it; ``missed``: infected patients called negative,
      whatever their fraction; ``false_positives``: uninfected patients called positive;
    - ``cells_read_per_patient``: the cells looked at, over all the patients, reading each review
      patient's ranked cells up to its first parasitized one or ``k``; ``cells_shown_per_patient``: the
      same if the reviewer reads all ``k``; ``manual_cells_per_patient``: what manual microscopy reads,
      every cell of every patient (``manual_cells``: another count, e.g. a smear's);
    - ``review_patients`` and their ``first_parasitized_ranks`` (None: no parasitized cell).
    """
    judged = table[table["cells"] > 0]
    rows = []
    for k in ks:
        after = after_review(table, k)
        infected, uninfected = after[after["infected"]], after[~after["infected"]]
        review = after[after["call"] == "review"]
        rows.append(
            {
                "k": int(k),
                "patients": int(len(after)),
                "review_patients": int(len(review)),
                "call_sensitivity": _share(infected["final_call"] == "positive"),
                "call_specificity": _share(uninfected["final_call"] == "negative"),
                "undecided": int((after["final_call"] == "review").sum()),
                "missed": int((infected["final_call"] == "negative").sum()),
                "false_positives": int((uninfected["final_call"] == "positive").sum()),
                "cells_read_per_patient": float(after["cells_read"].sum() / len(after))
                if len(after)
                else None,
                "cells_shown_per_patient": float(np.minimum(review["cells"], k).sum() / len(after))
                if len(after)
                else None,
                "manual_cells_per_patient": float(manual_cells)
                if manual_cells is not None
                else (float(judged["cells"].mean()) if len(judged) else None),
            }
        )
    return rows


def review_ranks(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Each review patient of a patient table with the truth and :data:`FIRST_RANK`: its cells, labelled
    fraction, and the rank of its first parasitized cell (None: none)."""
    review = table[table["call"] == "review"].sort_values("patient")
    return [
        {
            "patient": str(row.patient),
            "cells": int(row.cells),
            "infected": bool(row.infected),
            "labelled_fraction": float(row.labelled_fraction),
            "first_parasitized_rank": None if np.isnan(row.rank) else int(row.rank),
        }
        for row in review.rename(columns={FIRST_RANK: "rank"}).itertuples()
    ]


def _share(hits: pd.Series) -> float | None:
    return float(hits.mean()) if len(hits) else None


def choose_call_for_reviewer(
    table: pd.DataFrame,
    healthy_below: list[float],
    negative_below: list[float],
    *,
    cells_per_patient: int,
    max_cells_per_patient: float,
    min_cells: int = 50,
    smears: pd.DataFrame | None = None,
) -> tuple[PatientCall, dict[str, Any]]:
    """The call rule of the grid for a clinic with a reviewer, on these patients (a
    :func:`~malaria_pipeline.assess.patients.with_truth` table with :data:`FIRST_RANK`): among the rules
    that call no uninfected patient positive and no healthy smear of ``smears`` positive (simulated
    smears with ``parasitemia``, ``fraction``, ``healthy_chance`` and ``cells``), and whose review patients
    cost at most ``max_cells_per_patient`` cells looked at per patient overall (a reviewer reading each
    review patient's top ``cells_per_patient`` cells, up to the first parasitized one), the one that leaves
    the fewest infected patients negative after the review, whatever their fraction; then the most cautious
    the budget allows, as :func:`~malaria_pipeline.assess.patient_call.choose_call` takes it: the lowest
    ``healthy_below`` (the fewest positive calls), then the lowest ``negative_below`` (the most review; 0:
    every patient not called positive goes to the reviewer). Not the one of fewest cells: a rule chosen
    at the edge of the choosing patients errs on the next patient just past it.

    Where no rule meets them all: the fewest uninfected patients and healthy smears called positive, then
    the fewest cells over the budget, then the same order.

    Returns:
        The rule, and its :func:`~malaria_pipeline.assess.patient_call.patient_metrics` before review with the
        figures after it (``after_review``: :func:`review_workload` at ``cells_per_patient``),
        ``healthy_smears_positive`` and ``meets``.
    """
    healthy_smears = smears[smears["parasitemia"] == 0] if smears is not None else None
    candidates = []
    for healthy in healthy_below:
        for below in negative_below:
            rule = PatientCall(healthy_below=healthy, negative_below=below, min_cells=min_cells)
            called = table.assign(call=rule.calls(table))
            metrics = patient_metrics(called, 0.0)
            metrics["healthy_smears_positive"] = (
                sum(call == "positive" for call in rule.calls(healthy_smears))
                if healthy_smears is not None
                else 0
            )
            workload = review_workload(called, [cells_per_patient])[0]
            faults = metrics["false_positives"] + metrics["healthy_smears_positive"]
            cells = workload["cells_read_per_patient"] or 0.0
            over = max(cells - max_cells_per_patient, 0.0)
            meets = faults == 0 and over == 0
            key = (not meets, faults, over, workload["missed"], healthy, below)
            candidates.append((key, rule, {**metrics, "after_review": workload}, meets))
    _, rule, metrics, meets = min(candidates, key=lambda c: c[0])
    return rule, {**metrics, "meets": meets}


FINAL_CALL_COLUMNS = [
    "patient",
    "cells",
    "fraction",
    "fraction_low",
    "fraction_high",
    "healthy_chance",
    "model_call",
    "final_call",
    "decided_by",
    "reason",
    "cells_shown",
    "cells_reviewed",
    "task_key",
]


def final_calls(patients: pd.DataFrame, queue: pd.DataFrame, reviewed: pd.DataFrame) -> pd.DataFrame:
    """One row per patient of a patient table (``patient``, ``cells``, ``fraction``…, ``call``): the model's
    call, the final call and who made it (:data:`FINAL_CALL_COLUMNS`).

    A patient that was not queued keeps the model's call (``decided_by`` ``model``). A queued one (its
    cells in ``queue``: ``patient``, ``task_key``, ``rank``) gets :func:`final_call` of the verdicts on them
    (``reviewed``: ``task_key``, ``rank``, ``verdict``, ``reviewer``), made by the reviewers who gave them;
    while the reviewers have not settled it, its call is ``review`` and ``decided_by`` is
    :data:`UNDECIDED`.
    """
    verdicts = cell_verdicts(reviewed)
    tasks = queue.groupby(queue["patient"].astype(str)).agg(
        task_key=("task_key", "first"), shown=("rank", "size")
    )
    rows = []
    for row in patients.itertuples():
        patient = str(row.patient)
        base = {
            "patient": patient,
            "cells": int(row.cells),
            **{
                name: getattr(row, name)
                for name in ("fraction", "fraction_low", "fraction_high", "healthy_chance")
            },
            "model_call": row.call,
        }
        if patient not in tasks.index:
            rows.append(
                {
                    **base,
                    "final_call": row.call,
                    "decided_by": "model",
                    "reason": "not queued",
                    "cells_shown": 0,
                    "cells_reviewed": 0,
                    "task_key": None,
                }
            )
            continue
        task, shown = tasks.loc[patient, "task_key"], int(tasks.loc[patient, "shown"])
        given = verdicts[verdicts["task_key"] == task]
        call, reason = final_call(shown, given)
        rows.append(
            {
                **base,
                "final_call": call,
                "decided_by": ", ".join(
                    sorted({r for names in given["reviewers"] for r in names.split(", ")})
                )
                if call != "review"
                else UNDECIDED,
                "reason": reason,
                "cells_shown": shown,
                "cells_reviewed": int(len(given)),
                "task_key": task,
            }
        )
    return pd.DataFrame(rows, columns=FINAL_CALL_COLUMNS)


WORKLOAD_FIGURES = (
    "call_sensitivity",
    "call_specificity",
    "undecided",
    "missed",
    "false_positives",
    "cells_read_per_patient",
    "cells_shown_per_patient",
)


def workload_report(table: pd.DataFrame, ks: list[int], min_fraction: float) -> dict[str, Any]:
    """The review of a called patient table with the truth and :data:`FIRST_RANK`, for the docs and MLflow:
    its figures before review (:func:`~malaria_pipeline.assess.patient_call.patient_metrics`), after a review
    of the top ``k`` cells for each of ``ks`` (:func:`review_workload`), and each review patient's first
    parasitized rank (:func:`review_ranks`)."""
    return {
        "before_review": patient_metrics(table, min_fraction),
        "after_review": review_workload(table, ks),
        "review_patients": review_ranks(table),
    }


def workload_lines(name: str, report: dict[str, Any]) -> list[str]:
    """The log lines of a :func:`workload_report`: one per ``k``."""
    before = report["before_review"]
    ranks = pd.Series(
        [row["first_parasitized_rank"] for row in report["review_patients"] if row["infected"]], dtype=object
    ).value_counts()
    lines = [
        f"{name}: {before['patients']} patients ({before['infected']} infected), "
        f"{len(report['review_patients'])} in review; the first parasitized cell of the infected ones at rank "
        + (
            ", ".join(f"{rank}: {n}" for rank, n in sorted(ranks.items(), key=lambda item: str(item[0])))
            or "none"
        )
    ]
    for row in report["after_review"]:
        lines.append(
            f"  top {row['k']} cells reviewed: call sensitivity {number(row['call_sensitivity'], 3)}, specificity "
            f"{number(row['call_specificity'], 3)}, {row['undecided']} undecided, {row['missed']} infected called "
            f"negative, {row['false_positives']} uninfected called positive; cells looked at per patient "
            f"{number(row['cells_read_per_patient'], 2)} (all {row['k']} read: "
            f"{number(row['cells_shown_per_patient'], 2)}), against {number(row['manual_cells_per_patient'], 0)} "
            "read by manual microscopy"
        )
    return lines


def workload_scores(prefix: str, report: dict[str, Any]) -> dict[str, Any]:
    """The MLflow metrics of a :func:`workload_report`: ``<prefix>.k<k>.<figure>`` and ``<prefix>.review_share``."""
    scores = {f"{prefix}.review_share": report["before_review"]["review_share"]}
    for row in report["after_review"]:
        scores.update({f"{prefix}.k{row['k']}.{name}": row[name] for name in WORKLOAD_FIGURES})
    return scores
