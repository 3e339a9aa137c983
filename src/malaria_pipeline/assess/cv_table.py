"""Cross-validation's report as the lines of a text table, logged one record a line (as in a log file or
CI): the metrics' mean ± std with the pooled figure, the patients, the comparison of methods and the
detection limits (:mod:`~malaria_pipeline.assess.cv_report` builds the report). No Kedro, no MLflow."""

from __future__ import annotations

from typing import Any

from malaria_pipeline.assess.columns import WITHOUT_TTA
from malaria_pipeline.assess.method_comparison import COMPARED, QUANTIFIER_FIGURES
from malaria_pipeline.assess.text import mean_std_header, mean_std_lines, number, per_fold_line


def format_table(report: dict[str, Any]) -> list[str]:
    """The lines of the table of mean ± std per metric, with the pooled out-of-fold figure beside it."""
    lines = [
        f"Cross-validation over {report['folds']} patient-grouped folds ({report['images']:,} images of "
        f"{report['patient_count']} patients, out of fold):",
        mean_std_header("metric"),
        *mean_std_lines(report["mean_std"], report["pooled"]),
    ]
    if WITHOUT_TTA in report:
        lines.append(
            "the same models without test-time augmentation: "
            + ", ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in report[WITHOUT_TTA].items())
        )
    for row in report.get("target_sensitivities", []):
        if "sensitivity" in row and "specificity" in row:
            lines.append(
                f"target sensitivity {row['target_sensitivity']}{' with TTA' if row['tta'] else ''}: held-out "
                f"sensitivity {row['sensitivity']['mean']:.4f} ± {row['sensitivity']['std']:.4f}, specificity "
                f"{row['specificity']['mean']:.4f} ± {row['specificity']['std']:.4f} (median threshold "
                f"{row['median_threshold']:.4f})"
            )
    worst = report["per_patient"][:3]
    lines.append(
        "worst patients: "
        + ", ".join(f"{p['patient_id']} {p['accuracy']:.3f} of {p['images']}" for p in worst)
    )
    if report["recommended_epochs"] is not None:
        lines.append(
            f"epochs kept per fold {report['kept_epochs']}: a model on every patient trains "
            f"{report['recommended_epochs']} (training.epochs; docs/cross-validation.md)"
        )
    if report.get("recommended_operating_threshold") is not None:
        lines.append(
            f"median of the folds' operating thresholds {report['recommended_operating_threshold']:.4f}, "
            f"temperatures {number(report['recommended_temperature'])}"
        )
    if "patients" in report:
        lines += format_patient_table(report["patients"])
    return lines


def format_patient_table(patients: dict[str, Any]) -> list[str]:
    """The patient-level lines of the table: mean ± std over folds and pooled, each fold's rule and
    held-out figures, the rule all the patients choose, the comparisons and the detection limits."""
    pooled = patients["pooled"]
    lines = [
        f"Patients ({pooled['patients']}, {pooled['infected']} infected), out of fold, counted at "
        f"{patients['count_at']}: corrected fraction and its {patients['level']:.0%} interval with the spread "
        "between patients, call by the rule the other folds chose",
        mean_std_header("patient metric"),
        *mean_std_lines(patients["mean_std"], pooled),
    ]
    for row in patients["per_fold"]:
        lines.append(
            f"fold {row['fold']}: rule positive where a healthy patient's chance is below "
            f"{row['call']['healthy_below']:g}, negative below {row['call']['negative_below']:g}: "
            f"{row['patients']} patients, review {number(row['review_share'])}, call sensitivity "
            f"{number(row['call_sensitivity'])}, specificity {number(row['call_specificity'])}, "
            f"{row['missed_from_min_fraction']} infected of fraction >= {patients['min_fraction']:g} called "
            f"negative, {row['false_positives']} uninfected called positive, coverage {number(row['interval_coverage'])}"
        )
    rule = patients["recommended_call"]
    lines.append(
        f"the rule all {pooled['patients']} patients choose (evaluation.patients.call): healthy_below "
        f"{rule['healthy_below']:g}, negative_below {rule['negative_below']:g}"
    )
    return lines + comparison_lines(patients["methods"]) + detection_lines(patients["detection"])


def comparison_lines(methods: dict[str, Any]) -> list[str]:
    """Mean ± std over the folds (pooled) of each counting threshold and each quantifier
    (:func:`~malaria_pipeline.assess.method_comparison.compare_patient_methods`)."""

    def cell(figures: dict[str, Any], name: str) -> str:
        values, pooled = figures["mean_std"].get(name), figures["pooled"].get(name)
        if values is None:
            return f"{'n/a':>24}"
        return f"{values['mean']:>7.4f} ± {values['std']:.4f} ({number(pooled)})"

    lines = [
        "Counting threshold, the whole call out of fold (mean ± std over folds, pooled):",
        f"{'count_at':<22}" + "".join(f"{name:>27}" for name in COMPARED),
    ]
    for row in methods["thresholds"]:
        if "error" in row:
            lines.append(f"{str(row['count_at']):<22} n/a: {row['error']}")
            continue
        lines.append(f"{str(row['count_at']):<22}" + "".join(f"{cell(row, n):>27}" for n in COMPARED))
        lines.append(per_fold_line(row["per_fold"], COMPARED))
    lines += [
        f"Quantifiers (mlquantify) at {methods['count_at']}, bootstrap intervals (mean ± std over folds, pooled):",
        f"{'method':<22}" + "".join(f"{name:>27}" for name in QUANTIFIER_FIGURES),
    ]
    for row in methods["quantifiers"]:
        lines.append(f"{row['method']:<22}" + "".join(f"{cell(row, n):>27}" for n in QUANTIFIER_FIGURES))
        lines.append(per_fold_line(row["per_fold"], QUANTIFIER_FIGURES))
    return lines


def detection_lines(detection: dict[str, Any]) -> list[str]:
    """Detection capability (CLSI EP17-A2) per fold and pooled, and what smears of each parasitemia gave."""
    pooled = detection["pooled"]
    lines = [
        f"Detection capability on simulated smears of {detection['cells']:,} out-of-fold cells (CLSI EP17-A2): "
        f"{pooled['resampled']:.0%} of smears drew a patient's cells again",
        mean_std_header("limit"),
        *mean_std_lines(detection["mean_std"], pooled),
    ]
    for row in detection["per_fold"]:
        lines.append(
            f"fold {row['fold']}: LoB {number(row['lob'])}, LoD {number(row['lod'])}, LoQ {number(row['loq'])}, "
            f"{row['healthy_positive']} of {row['healthy_smears']} healthy smears called positive, coverage "
            f"{number(row['coverage'])}"
        )
    for row in pooled["by_parasitemia"]:
        lines.append(
            f"smears at parasitemia {row['parasitemia']:g}: positive {row['positive']:.3f}, negative "
            f"{row['negative']:.3f}, review {row['review']:.3f}; within ±25% {number(row['within_tolerance'])}; "
            f"coverage {row['coverage']:.3f}; median estimate {row['median_fraction']:.4f} "
            f"[{row['median_low']:.4f}, {row['median_high']:.4f}]"
        )
    return lines + [detection["sentence"]]
