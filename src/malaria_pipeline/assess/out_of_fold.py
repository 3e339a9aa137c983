"""The patient call out of fold: each fold's patients (and simulated smears of their cells) judged with
the rates, spread and rule of the *other* folds, so that cross-validation's patient figures are held out
twice over. No Kedro, no MLflow, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.detection import judge_smears, smears_of_cells
from malaria_pipeline.assess.patient_call import PatientCall, choose_call
from malaria_pipeline.assess.patients import (
    CellRates,
    count_thresholds,
    fit_patient_settings,
    judge_patients,
    rates_of,
)
from malaria_pipeline.assess.review import choose_call_for_reviewer, with_first_ranks, workload_report
from malaria_pipeline.assess.spread import PatientSpread

BUDGETS = ("cells", "patients")


def reviewer_budget(patients: dict[str, Any]) -> dict[str, Any] | None:
    """The reviewer's budget of ``patients.budget`` (the ``patients`` parameters): ``patients.reviewer`` for
    ``cells``, None for ``patients`` (the rule is then chosen within ``max_review``).

    Raises:
        ValueError: another budget.
    """
    budget = patients["budget"]
    if budget not in BUDGETS:
        raise ValueError(
            f"patients.budget is {budget!r}: give cells (a reviewer reads the top-ranked cells of each review "
            "patient: patients.reviewer.max_cells_per_patient) or patients (no reviewer: max_review)"
        )
    return patients["reviewer"] if budget == "cells" else None


def call_grid(patients: dict[str, Any]) -> tuple:
    """The grid that the call rule is chosen from, and what bounds it, of the ``patients`` parameters:
    ``(healthy_below, negative_below, min_fraction, max_review, min_cells)`` (:func:`choose_rule`)."""
    return (
        patients["choose_from"]["healthy_below"],
        patients["choose_from"]["negative_below"],
        patients["min_fraction"],
        patients["max_review"],
        patients["call"]["min_cells"],
    )


def patient_call_args(patients: dict[str, Any], positive: str, count_at: Any = None) -> dict[str, Any]:
    """The keyword arguments of :func:`cross_validated_patients` from the ``patients`` parameters, cells
    counted at ``count_at`` (default: ``patients.count_at``)."""
    return {
        "positive": positive,
        "count_at": patients["count_at"] if count_at is None else count_at,
        "level": patients["level"],
        "choose_from": patients["choose_from"],
        "min_fraction": patients["min_fraction"],
        "max_review": patients["max_review"],
        "min_cells": patients["call"]["min_cells"],
        "detection": patients["detection"],
        "healthy_range": patients["healthy_range"],
        "reviewer": reviewer_budget(patients),
    }


@dataclass(frozen=True)
class FoldReference:
    """What one fold's patients are judged with, all from the *other* folds' out-of-fold cells: the
    rates, the spread between their patients, and where the fold's own cells are counted."""

    fold: int
    held_out: np.ndarray  # bool, the fold's cells among the predictions
    rates: CellRates
    spread: PatientSpread
    threshold: np.ndarray  # one per held-out cell
    reference_threshold: np.ndarray  # one per cell of the other folds


def fold_references(
    predictions: pd.DataFrame,
    *,
    positive: str,
    count_at: float | str | dict[str, float],
    healthy_range: str = "all",
) -> list[FoldReference]:
    """For each fold of out-of-fold predictions (``fold``, ``patient_id``, ``label``, the probability
    column, ``operating_threshold``), its :class:`FoldReference` (the false alarms' spread fitted on the
    other folds' ``healthy_range`` patients: ``all`` or ``controls``)."""
    column = probability_column(positive)
    references = []
    for fold in sorted(predictions["fold"].unique()):
        held_out = (predictions["fold"] == fold).to_numpy()
        others = predictions[~held_out] if (~held_out).any() else predictions
        at_others, at_fold = count_thresholds(count_at, others, predictions[held_out], column, positive)
        source = (
            f"the out-of-fold cells of the other folds ({len(others):,} cells of "
            f"{others['patient_id'].nunique()} patients)"
        )
        truth = (others["label"] == positive).to_numpy()
        called = others[column].to_numpy() >= at_others
        references.append(
            FoldReference(
                fold=int(fold),
                held_out=held_out,
                rates=rates_of(truth, others[column].to_numpy(), at_others, source),
                spread=PatientSpread.of(
                    others["patient_id"].to_numpy(),
                    truth,
                    called,
                    float(np.median(at_others)),
                    source,
                    healthy_range,
                ),
                threshold=at_fold,
                reference_threshold=at_others,
            )
        )
    return references


def cross_validated_patients(
    predictions: pd.DataFrame,
    *,
    positive: str,
    count_at: float | str | dict[str, float],
    level: float,
    choose_from: dict[str, list[float]],
    min_fraction: float,
    max_review: float,
    min_cells: int = 50,
    detection: dict[str, Any] | None = None,
    healthy_range: str = "all",
    reviewer: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The patient table of out-of-fold predictions (``fold``, ``patient_id``, ``label``, the probability
    column and ``operating_threshold``), each fold held out twice over:

    - its patients are corrected with the sensitivity and specificity of the *other* folds' out-of-fold
      cells, and judged against the spread between the *other* folds' patients (the healthy range);
    - they are called by the rule that the other folds' patients (and, with ``detection``, the other
      folds' simulated smears) choose (:func:`~malaria_pipeline.assess.patient_call.choose_call`; with
      ``reviewer``, ``cells_per_patient`` and ``max_cells_per_patient``, the rule for a reviewer within that
      budget of cells: :func:`~malaria_pipeline.assess.review.choose_call_for_reviewer`).

    With ``detection`` (``cells``, ``parasitemia``, ``smears``, ``seed``), each fold's cells also make
    simulated smears (:func:`~malaria_pipeline.assess.detection.simulate_smears`), judged as its patients.

    Returns:
        The :func:`~malaria_pipeline.assess.patients.with_truth` table with ``fold``, ``healthy_below`` and
        ``negative_below`` (the rule that called each fold) and the rank of each patient's first
        parasitized cell (:data:`~malaria_pipeline.assess.review.FIRST_RANK`); the judged smears with ``fold`` (None without
        ``detection``). The rule that all the patients (and smears) choose, the one to store in a model, is
        :func:`choose_rule` of these two (cross-validation's report, ``patients.recommended_call``).
    """
    placeholder = PatientCall(healthy_below=0.0, negative_below=0.0)  # every call is made below
    tables, smears = [], []
    for ref in fold_references(
        predictions, positive=positive, count_at=count_at, healthy_range=healthy_range
    ):
        cells = predictions[ref.held_out]
        tables.append(
            judge_patients(
                cells,
                positive=positive,
                threshold=ref.threshold,
                rates=ref.rates,
                rule=placeholder,
                level=level,
                spread=ref.spread,
            ).assign(fold=ref.fold)
        )
        if detection is not None:
            made = smears_of_cells(
                cells, positive=positive, threshold=ref.threshold, detection=detection, seed_offset=ref.fold
            )
            smears.append(judge_smears(made, ref.rates, placeholder, level, ref.spread).assign(fold=ref.fold))
    grid = (choose_from["healthy_below"], choose_from["negative_below"], min_fraction, max_review, min_cells)
    column = probability_column(positive)
    table = with_first_ranks(
        pd.concat(tables, ignore_index=True),
        predictions,
        patient="patient_id",
        column=column,
        is_positive=(predictions["label"] == positive).to_numpy(),
    )
    table, judged = call_out_of_fold(
        table, *grid, smears=pd.concat(smears, ignore_index=True) if smears else None, reviewer=reviewer
    )
    return table, judged


def choose_rule(
    table: pd.DataFrame, grid: tuple, smears: pd.DataFrame | None, reviewer: dict[str, Any] | None
) -> tuple[PatientCall, dict[str, Any]]:
    """The rule of ``grid`` (``healthy_below``, ``negative_below``, ``min_fraction``, ``max_review``,
    ``min_cells``) that these patients choose: for a clinic without a reviewer, within ``max_review`` of
    the patients in review (:func:`~malaria_pipeline.assess.patient_call.choose_call`); with ``reviewer``
    (``cells_per_patient``, ``max_cells_per_patient``, and its own ``negative_below`` grid, if any), within
    that budget of cells looked at (:func:`~malaria_pipeline.assess.review.choose_call_for_reviewer`)."""
    if reviewer is None:
        return choose_call(table, *grid, smears=smears)
    healthy_below, negative_below, _, _, min_cells = grid
    return choose_call_for_reviewer(
        table,
        healthy_below,
        reviewer.get("negative_below", negative_below),
        cells_per_patient=reviewer["cells_per_patient"],
        max_cells_per_patient=reviewer["max_cells_per_patient"],
        min_cells=min_cells,
        smears=smears,
    )


def call_out_of_fold(
    table: pd.DataFrame, *grid, smears: pd.DataFrame | None = None, reviewer: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Each fold's patients (a :func:`~malaria_pipeline.assess.patients.with_truth` table with ``fold``)
    and smears called by the rule that the *other* folds' patients and smears choose (:func:`choose_rule`
    with ``grid`` and ``reviewer``), never by one chosen on themselves: both with ``call``,
    ``healthy_below`` and ``negative_below``."""
    table = table.copy()
    smears = smears.copy() if smears is not None else None
    for fold in table["fold"].unique():
        mine = (table["fold"] == fold).to_numpy()
        others_smears = smears[smears["fold"] != fold] if smears is not None else None
        rule, _ = choose_rule(table[~mine] if (~mine).any() else table, grid, others_smears, reviewer)
        frames = [(table, mine)] + (
            [(smears, (smears["fold"] == fold).to_numpy())] if smears is not None else []
        )
        for frame, rows in frames:
            frame.loc[rows, "call"] = rule.calls(frame[rows])
            frame.loc[rows, "healthy_below"] = rule.healthy_below
            frame.loc[rows, "negative_below"] = rule.negative_below
    return table, smears


def pooled_source(cells: int, patients: int, run_id: str | None) -> str:
    """Where the rates of a model that takes them from cross-validation come from, as patient tables show it
    (their ``rates_from``)."""
    run = f"cross-validation run {run_id}" if run_id else "cross-validation"
    return f"the pooled out-of-fold cells of {run} ({cells:,} cells of {patients} patients)"


def pooled_patient_settings(
    predictions: pd.DataFrame,
    *,
    positive: str,
    count_at: float | str | dict[str, float],
    quantifier: str,
    healthy_range: str,
    rule: PatientCall,
    operating_threshold: float | None,
    run_id: str | None,
) -> dict[str, Any]:
    """What a model trained on every patient stores for its patient tables, from the out-of-fold predictions
    of the cross-validation that claims its accuracy (``fold``, ``patient_id``, ``label``, the probability
    column, ``operating_threshold``), all folds pooled: the keys that a training run stores from its
    validation subset (``reference_cells``, ``count_threshold``, ``patient_spread``, ``quantifier``,
    ``patient_call``), with ``rule`` the call rule that cross-validation recommends.

    ``count_at: operating`` counts every cell at ``operating_threshold`` (the median over the folds, the
    model's own: ``evaluation.without_validation``), not at the threshold of the fold that predicted it.
    """
    if count_at == "operating" and operating_threshold is not None:
        predictions = predictions.assign(operating_threshold=float(operating_threshold))
    source = pooled_source(len(predictions), predictions["patient_id"].nunique(), run_id)
    settings = fit_patient_settings(
        predictions,
        positive=positive,
        count_at=count_at,
        quantifier=quantifier,
        source=source,
        healthy_range=healthy_range,
    )
    return {**settings, "patient_call": rule.as_dict()}


def workload_by_budget(
    table: pd.DataFrame, smears: pd.DataFrame, patients: dict[str, Any], k: list[int]
) -> dict[str, Any]:
    """What a reviewer of each review patient's top ``k`` cells gives and costs out of fold
    (:func:`~malaria_pipeline.assess.review.workload_report`), for each budget the rule can be chosen under:
    ``cells`` (a reviewer: at most ``patients.reviewer.max_cells_per_patient`` cells looked at per patient)
    and ``patients`` (none: at most ``max_review`` of the patients in review). Each fold is called by the rule
    the other folds chose under that budget; ``table`` (a :func:`cross_validated_patients` table) was called
    under ``patients.budget`` already.

    Returns:
        ``budget``, ``k`` and ``by_budget``: per budget its bound, the rule of each fold, the rule all the
        patients choose (``recommended_call``, and its figures ``recommended_call_on_all``) and the
        ``out_of_fold`` workload.
    """
    grid = call_grid(patients)
    report: dict[str, Any] = {"budget": patients["budget"], "k": list(k), "by_budget": {}}
    for budget in BUDGETS:
        reviewer = reviewer_budget({**patients, "budget": budget})
        called = (
            table
            if budget == patients["budget"]
            else call_out_of_fold(table, *grid, smears=smears, reviewer=reviewer)[0]
        )
        rule, chosen = choose_rule(called, grid, smears, reviewer)
        report["by_budget"][budget] = {
            "bound": {"max_cells_per_patient": reviewer["max_cells_per_patient"]}
            if reviewer
            else {"max_review": patients["max_review"]},
            "per_fold_rules": fold_rules(called),
            "recommended_call": rule.as_dict(),
            "recommended_call_on_all": chosen,
            "out_of_fold": workload_report(called, k, patients["min_fraction"]),
        }
    return report


def fold_rules(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rule that called each fold of a :func:`call_out_of_fold` table (chosen on the other folds)."""
    rules = table.groupby("fold")[["healthy_below", "negative_below"]].first().reset_index()
    return [
        {
            "fold": int(row.fold),
            "healthy_below": float(row.healthy_below),
            "negative_below": float(row.negative_below),
        }
        for row in rules.itertuples()
    ]
