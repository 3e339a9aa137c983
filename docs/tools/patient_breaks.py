"""Breaks each patient-statistics behaviour once (one line replaced), runs its tests, restores the file, and
prints which tests failed: docs/mutation-testing.md. Run from anywhere: .venv/bin/python docs/tools/patient_breaks.py [N ...]"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
S = "src/malaria_pipeline/assess/"
BREAKS = [
    (
        "spread: the likelihood fitted with rho pinned to its floor (one rate for all)",
        S + "spread.py",
        "    best = min(fits, key=lambda fit: fit.fun)\n",
        "    best = min(fits, key=lambda fit: fit.fun)\n    best.x[1] = logit(RHO_FLOOR)\n",
        "tests/assess/test_spread.py",
    ),
    (
        "spread: P(K > k) instead of P(K >= k)",
        S + "spread.py",
        "return betabinom.sf(np.asarray(events) - 1, cells, self.a, self.b)",
        "return betabinom.sf(np.asarray(events), cells, self.a, self.b)",
        "tests/assess/test_spread.py",
    ),
    (
        "spread: each class counted over all the patient's cells",
        S + "spread.py",
        'counts = cells.groupby(["positive", "patient"])["called"].agg(["sum", "size"])',
        'counts = cells.groupby(["positive", "patient"])["called"].agg(["sum", "size"]); counts["size"] = cells.groupby("patient").size().reindex(counts.index.get_level_values(1)).to_numpy()',
        "tests/assess/test_spread.py",
    ),
    (
        "interval: the false alarms' between-patient variance left out",
        S + "patients.py",
        "(sp_ * (1 - sp_) / n_sp + between_sp)",
        "(sp_ * (1 - sp_) / n_sp)",
        "tests/assess/test_patients.py",
    ),
    (
        "interval: the detection's between-patient variance left out",
        S + "patients.py",
        "(se_ * (1 - se_) / n_se + between_se)",
        "(se_ * (1 - se_) / n_se)",
        "tests/assess/test_patients.py",
    ),
    (
        "call: positive at a healthy chance equal to the level",
        S + "patient_call.py",
        "if healthy_chance < self.healthy_below:",
        "if healthy_chance <= self.healthy_below:",
        "tests/assess/test_patients.py",
    ),
    (
        "call: negative at an estimate equal to negative_below",
        S + "patient_call.py",
        'return "negative" if fraction < self.negative_below else "review"',
        'return "negative" if fraction <= self.negative_below else "review"',
        "tests/assess/test_patients.py",
    ),
    (
        "call: min_cells ignored",
        S + "patient_call.py",
        "or cells < self.min_cells:",
        "or cells < 0:",
        "tests/assess/test_patients.py",
    ),
    (
        "choice: a review share equal to max_review refused",
        S + "patient_call.py",
        "meets = faults == 0 and review <= max_review",
        "meets = faults == 0 and review < max_review",
        "tests/assess/test_patients.py",
    ),
    (
        "choice: the least review instead of the most cautious",
        S + "patient_call.py",
        "fallback = (below, review) if not meets else (0.0, 0.0)",
        "fallback = (below, review) if not meets else (0.0, review)",
        "tests/assess/test_patients.py",
    ),
    (
        "out of fold: each fold called by the rule chosen on itself",
        S + "out_of_fold.py",
        "rule, _ = choose_rule(table[~mine] if (~mine).any() else table, grid, others_smears, reviewer)",
        "rule, _ = choose_rule(table[mine], grid, others_smears, reviewer)",
        "tests/assess/test_patients.py",
    ),
    (
        "out of fold: the spread fitted on every fold's cells, the judged fold's too",
        S + "out_of_fold.py",
        '                    others["patient_id"].to_numpy(),\n                    truth,\n                    called,',
        '                    predictions["patient_id"].to_numpy(),\n                    (predictions["label"] == positive).to_numpy(),\n                    predictions[column].to_numpy() >= 0.5,',
        "tests/assess/test_patients.py",
    ),
    (
        "table: the configured level ignored",
        S + "patients.py",
        "corrected_fraction(int(k), int(n), rates, level, spread) if usable",
        "corrected_fraction(int(k), int(n), rates, 0.95, spread) if usable",
        "tests/assess/test_patients.py tests/pipelines/inference/test_nodes.py tests/pipelines/evaluation/test_nodes.py",
    ),
    (
        "count_at: a specificity read on the judged cells",
        S + "patients.py",
        '(reference["label"] == positive).to_numpy(), reference[column].to_numpy(), count_at["specificity"]',
        '(judged["label"] == positive).to_numpy(), judged[column].to_numpy(), count_at["specificity"]',
        "tests/assess/test_patients.py",
    ),
    (
        "model: an older rule taken as it is",
        S + "patients.py",
        '    if set(rule) != {"healthy_below", "negative_below", "min_cells"}:\n        rule = default_call',
        "    if not rule:\n        rule = default_call",
        "tests/assess/test_patients.py",
    ),
    (
        "LoB: the 90th percentile",
        S + "detection.py",
        "LOB_PERCENTILE = 95",
        "LOB_PERCENTILE = 90",
        "tests/assess/test_detection.py",
    ),
    (
        "LoD: 95% positive not enough",
        S + "detection.py",
        'row["positive"] >= LOD_DETECTED',
        'row["positive"] > LOD_DETECTED',
        "tests/assess/test_detection.py",
    ),
    (
        "LoQ: an estimate at 25% exactly out",
        S + "detection.py",
        "<= LOQ_TOLERANCE * fraction",
        "< LOQ_TOLERANCE * fraction",
        "tests/assess/test_detection.py",
    ),
    (
        "LoQ: 90% within not enough",
        S + "detection.py",
        'row["within_tolerance"] >= LOQ_WITHIN',
        'row["within_tolerance"] > LOQ_WITHIN',
        "tests/assess/test_detection.py",
    ),
    (
        "smears: a healthy smear of any patient's uninfected cells, not a control's",
        S + "detection.py",
        "donors = infected if parasitized else controls",
        "donors = infected if parasitized else sorted(by_class[False])",
        "tests/assess/test_detection.py",
    ),
    (
        "smears: an infected smear's background from a control, not its own patient",
        S + "detection.py",
        "uninfected = by_class[False].get(donor)",
        "uninfected = None",
        "tests/assess/test_detection.py",
    ),
    (
        "choice: a healthy smear called positive not counted as an error",
        S + "patient_call.py",
        '                + metrics["healthy_smears_positive"]\n',
        "\n",
        "tests/assess/test_patients.py",
    ),
    (
        "choice: where none meets, the least review before the lowest negative_below",
        S + "patient_call.py",
        "fallback = (below, review) if not meets else (0.0, 0.0)",
        "fallback = (review, below) if not meets else (0.0, 0.0)",
        "tests/assess/test_patients.py",
    ),
    (
        "out of fold: each fold's smears called by the rule chosen with its own smears",
        S + "out_of_fold.py",
        'others_smears = smears[smears["fold"] != fold] if smears is not None else None',
        "others_smears = smears",
        "tests/assess/test_patients.py tests/pipelines/cross_validation/test_nodes.py",
    ),
    (
        "healthy range: fitted on the controls whatever healthy_range says",
        S + "spread.py",
        'if healthy_from == "controls" and len(controls):',
        "if len(controls):",
        "tests/assess/test_spread.py tests/assess/test_patients.py",
    ),
    (
        "table: a cell at the counting threshold not counted",
        S + "patients.py",
        "called = predictions[probability_column(positive)].to_numpy() >= threshold",
        "called = predictions[probability_column(positive)].to_numpy() > threshold",
        "tests/assess/test_patients.py",
    ),
    (
        "metrics: a patient at min_fraction exactly not held to the rule",
        S + "patient_call.py",
        '(decided["labelled_fraction"] >= min_fraction)',
        '(decided["labelled_fraction"] > min_fraction)',
        "tests/assess/test_patients.py",
    ),
    (
        "training: the spread fitted on the validation cells at 0.5 whatever count_at says",
        "src/malaria_pipeline/assess/patients.py",
        "    threshold = float(at[0])\n",
        "    threshold = 0.5\n",
        "tests/assess/test_patients.py tests/pipelines/model_training/test_nodes.py",
    ),
    (
        "evaluation: the test patients' smears judged without the model's spread",
        "src/malaria_pipeline/assess/detection.py",
        "limits = detection_limits(judge_smears(smears, settings.rates, settings.rule, level, settings.spread))",
        "limits = detection_limits(judge_smears(smears, settings.rates, settings.rule, level, None))",
        "tests/pipelines/evaluation/test_nodes.py",
    ),
    (
        "outlook: median_high the median of the low ends",
        S + "detection.py",
        '"median_high": float(group["fraction_high"].median()),',
        '"median_high": float(group["fraction_low"].median()),',
        "tests/assess/test_detection.py",
    ),
    (
        "quantifiers: PACC given crisp calls",
        S + "quantifiers.py",
        '    if method == "ACC":',
        '    if method in ("ACC", "PACC"):',
        "tests/assess/test_quantifiers.py",
    ),
    (
        "quantifiers: the reference of a fold includes the fold",
        S + "quantifiers.py",
        "others = predictions[~ref.held_out] if (~ref.held_out).any() else predictions",
        "others = predictions",
        "tests/assess/test_quantifiers.py",
    ),
    (
        "inference: cells counted by their label, not at the model's counting threshold",
        "src/malaria_pipeline/pipelines/inference/nodes.py",
        'predictions[probability_column(params["positive_class"])].to_numpy() >= settings.threshold,',
        '(predictions["label"] == params["positive_class"]).to_numpy(),',
        "tests/pipelines/inference/test_nodes.py",
    ),
    # Issue 41: the breaks that passed the tests unnoticed before, each with the test that now fails.
    (
        "served: a cell at the counting threshold not counted",
        "src/malaria_pipeline/pipelines/inference/nodes.py",
        "p_positive[~failed] >= settings.threshold,",
        "p_positive[~failed] > settings.threshold,",
        "tests/pipelines/inference/test_nodes.py",
    ),
    (
        "served: the spread between patients dropped from the interval and call",
        "src/malaria_pipeline/pipelines/inference/nodes.py",
        "        errors=patients[failed],\n        spread=settings.spread,",
        "        errors=patients[failed],\n        spread=None,",
        "tests/pipelines/inference/test_nodes.py",
    ),
    (
        "batch_patients: a cell at the counting threshold not counted",
        "src/malaria_pipeline/pipelines/batch_inference/nodes.py",
        '(F.col(probability_column(params["positive_class"])) >= settings.threshold)',
        '(F.col(probability_column(params["positive_class"])) > settings.threshold)',
        "tests/pipelines/batch_inference/test_patients.py",
    ),
    (
        "batch_patients: a fixed level instead of batch_inference.patients.level",
        "src/malaria_pipeline/pipelines/batch_inference/nodes.py",
        'counts, settings.rates, settings.rule, params["patients"]["level"], settings.spread',
        "counts, settings.rates, settings.rule, 0.95, settings.spread",
        "tests/pipelines/batch_inference/test_patients.py",
    ),
    (
        "batch_patients: batch_inference.patients.call never reaches a bundle that keeps no rule",
        "src/malaria_pipeline/pipelines/batch_inference/nodes.py",
        '.patient_settings(params["patients"]["call"])',
        ".patient_settings()",
        "tests/pipelines/batch_inference/test_patients.py",
    ),
    (
        "detection: the out-of-fold smears judged without the spread",
        S + "out_of_fold.py",
        "judge_smears(made, ref.rates, placeholder, level, ref.spread)",
        "judge_smears(made, ref.rates, placeholder, level, None)",
        "tests/assess/test_patients.py",
    ),
    (
        "detection: the out-of-fold smears judged at a fixed level",
        S + "out_of_fold.py",
        "judge_smears(made, ref.rates, placeholder, level, ref.spread)",
        "judge_smears(made, ref.rates, placeholder, 0.95, ref.spread)",
        "tests/assess/test_patients.py",
    ),
    (
        "detection: the test patients' smears judged at a fixed level",
        S + "detection.py",
        "judge_smears(smears, settings.rates, settings.rule, level, settings.spread)",
        "judge_smears(smears, settings.rates, settings.rule, 0.95, settings.spread)",
        "tests/pipelines/evaluation/test_nodes.py tests/assess/test_detection.py",
    ),
    (
        "detection: a smear of one cell fewer than smears.cells",
        S + "detection.py",
        "(uninfected, cells - parasitized),",
        "(uninfected, cells - parasitized - 1),",
        "tests/assess/test_detection.py",
    ),
    (
        "report: the recommended rule chosen without the smears",
        S + "cv_report.py",
        "choose_rule(cv_patients, call_grid(patients), cv_smears, reviewer_budget(patients))",
        "choose_rule(cv_patients, call_grid(patients), None, reviewer_budget(patients))",
        "tests/pipelines/cross_validation/test_nodes.py tests/assess/test_cv_report.py",
    ),
    (
        "out of fold: min_cells left out of the grid",
        S + "out_of_fold.py",
        'grid = (choose_from["healthy_below"], choose_from["negative_below"], min_fraction, max_review, min_cells)',
        'grid = (choose_from["healthy_below"], choose_from["negative_below"], min_fraction, max_review)',
        "tests/assess/test_patients.py",
    ),
    (
        "report: min_cells left out of the parameters' grid",
        S + "out_of_fold.py",
        '        patients["max_review"],\n        patients["call"]["min_cells"],\n    )',
        '        patients["max_review"],\n    )',
        "tests/pipelines/cross_validation/test_nodes.py tests/assess/test_cv_report.py",
    ),
    (
        "choice: min_cells ignored",
        S + "patient_call.py",
        "rule = PatientCall(healthy_below=healthy, negative_below=below, min_cells=min_cells)",
        "rule = PatientCall(healthy_below=healthy, negative_below=below)",
        "tests/assess/test_patients.py",
    ),
    (
        "coverage: a labelled fraction on the interval's lower bound not covered",
        S + "patients.py",
        'table["covered"] = (table["fraction_low"] <= table["labelled_fraction"])',
        'table["covered"] = (table["fraction_low"] < table["labelled_fraction"])',
        "tests/assess/test_patients.py",
    ),
    (
        "spread: healthy_range controls fitted on every patient",
        S + "spread.py",
        'if healthy_from == "controls" and len(controls):',
        "if False:",
        "tests/assess/test_spread.py tests/assess/test_patients.py",
    ),
    (
        "out of fold: healthy_range not passed to the folds' spreads",
        S + "out_of_fold.py",
        "predictions, positive=positive, count_at=count_at, healthy_range=healthy_range",
        "predictions, positive=positive, count_at=count_at",
        "tests/assess/test_patients.py",
    ),
    (
        "training: healthy_range not passed to the stored spread",
        S + "patients.py",
        "        source,\n        healthy_range,\n    )",
        "        source,\n    )",
        "tests/assess/test_patients.py",
    ),
    (
        "spread: the likelihood fitted from one start",
        S + "spread.py",
        "for rho in (1e-4, 1e-2, 0.2)",
        "for rho in (1e-4,)",
        "tests/assess/test_spread.py",
    ),
]
only = sys.argv[1:]
for i, (what, path, old, new, tests) in enumerate(BREAKS, 1):
    if only and str(i) not in only:
        continue
    file = ROOT / path
    text = file.read_text()
    if old not in text:
        print(f"{i}. {what}: PATTERN NOT FOUND")
        continue
    file.write_text(text.replace(old, new, 1))
    try:
        r = subprocess.run(
            [
                str(ROOT / ".venv/bin/python"),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                "-m",
                "not slow",
                *tests.split(),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,  # a failing test is the point
        )
        failed = [
            line.split("::")[-1].split(" ")[0] for line in r.stdout.splitlines() if line.startswith("FAILED")
        ]
        print(
            f"{i}. {what}: {'CAUGHT by ' + ', '.join(failed) if failed else 'NOT CAUGHT'} ({r.stdout.strip().splitlines()[-1]})",
            flush=True,
        )
    finally:
        file.write_text(text)
