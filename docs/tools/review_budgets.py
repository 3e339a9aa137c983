"""The call rule chosen for a reviewer under several budgets of cells per patient, out of fold, from the
latest cross-validation's patients and smears (docs/review.md): each fold called by the rule the other
folds choose within the budget, a reviewer reading each review patient's top cells (the archive's label
for the reviewer's eye); and the rule without a reviewer (max_review) beside them. Then each of those
rules on the test patients of the latest training run (evaluation_patients).

    .venv/bin/python docs/tools/review_budgets.py [--budgets 0.25 0.5 1 2 3] [--cells 6]

Run in the project root after `kedro run --pipelines cross_validation`; reads the parameters of conf/base.
"""

from __future__ import annotations

import argparse

from malaria_pipeline.assess.out_of_fold import call_out_of_fold, choose_rule
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.review import review_workload, with_first_ranks
from malaria_pipeline.pipelines.cross_validation.nodes import call_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--cells", type=int, default=6, help="cells shown per review patient")
    args = parser.parse_args()

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(".")
    with KedroSession.create(project_path=".") as session:
        context = session.load_context()
        patients = context.params["cross_validation"]["patients"]
        table, smears = context.catalog.load("cv_patients"), context.catalog.load("cv_smears")
        test_patients = context.catalog.load("evaluation_patients")
        test_cells = context.catalog.load("evaluation_predictions")
    grid = call_grid(patients)
    print(
        f"{'budget':<24}{'rule (all patients)':<28}{'review':>8}{'model misses':>14}{'after review: misses':>22}"
        f"{'sensitivity':>13}{'specificity':>13}{'cells/patient':>15}"
    )
    budgets = [
        (
            f"{b:g} cells per patient",
            {**patients["reviewer"], "max_cells_per_patient": b, "cells_per_patient": args.cells},
        )
        for b in args.budgets
    ]
    rules = {}
    for name, reviewer in [*budgets, (f"max_review {patients['max_review']:g}", None)]:
        called, _ = call_out_of_fold(table, *grid, smears=smears, reviewer=reviewer)
        rule, _ = choose_rule(table, grid, smears, reviewer)
        rules[name] = rule
        print(_row(name, rule, called, args.cells))
    test = test_patients[test_patients["subset"] == "test"]
    cells = test_cells[test_cells["subset"] == "test"]
    test = with_first_ranks(
        test,
        cells,
        patient="patient_id",
        column="p_parasitized",
        is_positive=(cells["label"] == "Parasitized").to_numpy(),
    )
    print(
        f"\nThe {len(test)} test patients of the latest training run ({int(test['infected'].sum())} infected), each rule:"
    )
    for name, rule in rules.items():
        called = test.assign(call=PatientCall(**rule.as_dict()).calls(test))
        print(_row(name, rule, called, args.cells))


def _row(name: str, rule, called, cells: int) -> str:
    """A line of the table: the rule, the patients it sends to review and misses, and the review of ``cells``."""
    after = review_workload(called, [cells])[0]
    model_missed = int(((called["call"] == "negative") & called["infected"]).sum())
    return (
        f"{name:<24}{f'{rule.healthy_below:g} / {rule.negative_below:g}':<28}"
        f"{(called['call'] == 'review').mean():>8.1%}{model_missed:>14}{after['missed']:>22}"
        f"{after['call_sensitivity']:>13.3f}{after['call_specificity']:>13.3f}{after['cells_read_per_patient']:>15.2f}"
    )


if __name__ == "__main__":
    main()
