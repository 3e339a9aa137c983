"""The model card of a training run (Mitchell et al. 2019): what the model is, what it was trained and
measured on, how far to trust it, and how to reproduce it, in Markdown.

Written from the run's own records only (the model bundle, the ingestion report, the split, the
evaluation metrics, the parameters and, for a model trained on every patient, its cross-validation
run's metrics): nothing in it is typed by hand except the fixed sentences of intended use and
limitations.
"""

from __future__ import annotations

from typing import Any

import malaria_pipeline
from malaria_pipeline.assess.metrics import at_specificity_phrase
from malaria_pipeline.assess.operating_point import operating_point_doubts, rate_interval
from malaria_pipeline.assess.patient_call import PATIENT_METRICS
from malaria_pipeline.assess.text import number

HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")


def model_card(facts: dict[str, Any]) -> str:
    """The card as Markdown. ``facts``: what :func:`malaria_pipeline.pipelines.evaluation.nodes.write_model_card`
    gathers (``model``, ``ingestion``, ``subsets``, ``grayscale``, ``evaluation``, ``parameters``, ``profile``,
    ``cross_validation``, ``run_id``, ``registered_model``, ``onnx``: the ONNX check, None without one)."""
    sections = [
        _title(facts),
        _model(facts),
        _data(facts),
        _training(facts),
        _metrics(facts),
        _operating_point(facts),
        _high_specificity(facts),
        _patients(facts),
        _calibration(facts),
        _use_and_limits(facts),
        _reproduce(facts),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _title(facts):
    run = f" · MLflow run `{facts['run_id']}`" if facts.get("run_id") else ""
    return (
        f"# Model card: {facts['registered_model']}\n\n"
        f"malaria-pipeline {malaria_pipeline.__version__}{run}. Classifies a thin-blood-smear red-cell crop as "
        f"{' or '.join(facts['model']['class_names'])}."
    )


def _model(facts):
    model = facts["model"]
    width = f", width {model['network_args']['width']}" if model["architecture"] == "resnet9" else ""
    pretrained = (
        "ImageNet weights (torchvision), fine-tuned" if model.get("pretrained") else "trained from scratch"
    )
    return (
        "## Model\n\n"
        f"- {model['architecture']}{width}, {pretrained}; input {model['image_size']}×{model['image_size']} "
        f"pixels, 3 channels, normalized inside the model (mean {_numbers(model['mean'])}, std {_numbers(model['std'])}).\n"
        f"- Outputs: logits of {model['class_names']}; probabilities are softmax(logits / T), T = {model.get('temperature', 1.0):.4f}.\n"
        f"- Weights of epoch {model.get('best_epoch', '?')}; trained with torch {model.get('torch_version', '?')}."
        + _onnx(facts.get("onnx"))
    )


def _onnx(check):
    """The ONNX export and its check against PyTorch, as a line of the Model section."""
    if not check:
        return "\n- No ONNX graph: the run that trained it exported none."
    return (
        f"\n- Also one ONNX graph (opset {check['opset']}, {check['bytes']:,} bytes; `model.onnx` in the run's "
        "`onnx/` artifacts): uint8 images in, probabilities out, normalization and T inside. Checked against "
        f"PyTorch on {check['cells']:,} {check['checked_on']} cells with ONNX Runtime {check['onnxruntime']}: "
        f"the probabilities differ by at most {check['max_abs_difference']:.2g} (the run fails above "
        f"{check['tolerance']:g}), the labels {'are the same' if check['same_labels'] else 'are not all the same'}."
    )


def _data(facts):
    ingestion, parameters = facts["ingestion"], facts["parameters"]
    per_class = ", ".join(f"{name} {count:,}" for name, count in ingestion["images_per_class"].items())
    colour = (
        "grayscale (the three channels are equal in every image checked)" if facts["grayscale"] else "colour"
    )
    split = parameters["preprocessing"]["split"]
    rows = "\n".join(
        f"| {name} | {s['patients']} | {s['images']:,} | {s.get('parasitized', 0):,} |"
        for name, s in facts["subsets"].items()
    )
    return (
        "## Data\n\n"
        f"- Archive: `{ingestion['source']}`: {ingestion['images']:,} images ({per_class}) of "
        f"{ingestion['patients']} patients; {len(ingestion.get('skipped', []))} files skipped, "
        f"{len(ingestion.get('duplicates', []))} duplicates.\n"
        f"- Images: {colour}, fitted to {ingestion['image_size']} pixels.\n"
        f"- Split: `{split['strategy']}` (seed {split['seed']}): "
        + (
            "no patient has cells in two subsets.\n"
            if split["strategy"] == "patient"
            else "cells of one patient may be in several subsets, so test figures are optimistic.\n"
        )
        + "\n| subset | patients | images | parasitized |\n|---|---|---|---|\n"
        + rows
    )


def _training(facts):
    t = facts["parameters"]["training"]
    jitter = {k: t[k] for k in ("brightness", "contrast", "gamma", "saturation", "hue") if t.get(k)}
    return (
        "## Training\n\n"
        f"- Profile `{facts['profile']}`; {t['epochs']} epochs, one-cycle schedule to max LR {t['max_lr']} "
        f"(pct_start {t['pct_start']}), {t['optimizer']}, weight decay {t['weight_decay']}, batch {t['batch_size']}, "
        f"label smoothing {t['label_smoothing']}, gradient clip {t['grad_clip']}, seed {t['seed']}.\n"
        f"- Augmentation: pad-and-crop {t['pad']} px, flips {t['flips']}, rotations {t['rotations']}"
        + (f", jitter {jitter}" if jitter else "")
        + (f"; weight EMA {t['ema_decay']}" if t.get("ema_decay") else "")
        + f"; weights kept: {t['keep']}; images with suspect labels left out: {t['exclude_label_issues']}."
    )


def _metrics(facts):
    evaluation, cv = facts["evaluation"], facts.get("cross_validation")
    lines = ["## Metrics"]
    if cv:
        lines.append(
            f"\n**The accuracy claim: patient-grouped cross-validation**, run `{cv['run_id']}` "
            f"({cv['folds']} folds; mean ± sample std over folds, threshold 0.5):\n"
        )
        lines.append("| metric | mean | std |\n|---|---|---|")
        for name in (*HEADLINE, "ece"):
            if f"cv.{name}.mean" in cv["metrics"]:
                lines.append(
                    f"| {name} | {cv['metrics'][f'cv.{name}.mean']:.4f} | {cv['metrics'].get(f'cv.{name}.std', float('nan')):.4f} |"
                )
    subsets = [s for s in ("validation", "test") if s in evaluation]
    if subsets:
        level = facts["parameters"]["evaluation"]["intervals"]["level"]
        lines.append(
            f"\n**Held-out subsets of this run** (threshold {evaluation['threshold']}; in brackets the "
            f"{level:.0%} interval from {facts['parameters']['evaluation']['intervals']['resamples']} "
            "bootstrap resamples of whole patients):\n"
        )
        lines.append("| subset | cells | " + " | ".join(HEADLINE) + " |\n|---|---|" + "---|" * len(HEADLINE))
        for subset in subsets:
            m = evaluation[subset]
            cells = [_with_interval(m.get(name), (m.get("intervals") or {}).get(name)) for name in HEADLINE]
            lines.append(f"| {subset} | {m['images']:,} | " + " | ".join(cells) + " |")
        if not cv:
            lines.append(
                f"\nOne split of {facts['subsets'].get('test', {}).get('patients', 0)} test patients: "
                "`kedro run --pipelines cross_validation` measures the configuration on every patient "
                "(docs/cross-validation.md)."
            )
    elif not cv:
        lines.append(
            "\nNo held-out images and no cross-validation run named (`cross_validation_run_id`): "
            "this model's accuracy has not been measured."
        )
    return "\n".join(lines)


def _high_specificity(facts):
    """The sensitivity at the specificities a smear of thousands of healthy cells needs; None without them."""
    evaluation, cv = facts["evaluation"], facts.get("cross_validation")
    lines = [
        f"- {subset}: {at_specificity_phrase(evaluation[subset]['at_specificity'])}."
        for subset in ("validation", "test")
        if evaluation.get(subset, {}).get("at_specificity")
    ]
    metrics = (cv or {}).get("metrics", {})
    folds = sorted(
        (float(name[len("cv.sensitivity_at_specificity_") : -len(".mean")]), name)
        for name in metrics
        if name.startswith("cv.sensitivity_at_specificity_") and name.endswith(".mean")
    )
    if folds:
        lines.append(
            "- cross-validation (mean ± std over folds, each read on its held-out cells): "
            + "; ".join(
                f"sensitivity {metrics[name]:.4f} ± {metrics.get(name[: -len('mean')] + 'std', float('nan')):.4f} "
                f"at specificity {target:g}"
                for target, name in folds
            )
            + "."
        )
    if not lines:
        return None
    return (
        "## At the specificity a smear needs\n\n"
        "A smear holds thousands of healthy cells: at specificity 0.999, one in 1,000 is called Parasitized. "
        "The sensitivity there, each a point of the ROC curve read on the cells named, with its threshold:\n\n"
        + "\n".join(lines)
    )


def _operating_point(facts):
    point = facts["model"].get("operating_point")
    served = facts["parameters"]["inference"]["threshold"]
    text = f"## Operating point\n\n- Served threshold (`inference.threshold`): {served}.\n"
    if not point:
        return (
            text + "- No operating threshold is stored in the model (`inference.threshold: auto` is refused)."
        )
    text += (
        f"- Stored operating threshold {point['threshold']:.4f} on P({point['positive_class']}), chosen for a "
        + (
            f"specificity of {point['target_specificity']}"
            if point.get("target_specificity") is not None
            else f"sensitivity of {point['target_sensitivity']}"
        )
        + (" with test-time augmentation" if point.get("tta") else "")
    )
    if "sensitivity" in point:
        text += "; on validation: " + ", ".join(
            f"{rate} {point[rate]:.4f}"
            + (
                " (95% interval {:.4f} to {:.4f}, {:,} cells)".format(
                    *rate_interval(point[rate], point[n]), point[n]
                )
                if point.get(n)
                else ""
            )
            for rate, n in (("sensitivity", "positives"), ("specificity", "negatives"))
        )
    at_test = (facts["evaluation"].get("operating_point") or {}).get("test")
    if at_test:
        text += f"; on test: sensitivity {_with_interval(at_test['sensitivity'], None)}, specificity {_with_interval(at_test['specificity'], None)}"
    text += "."
    checks = facts["parameters"]["evaluation"].get("operating_point_checks")
    doubts = operating_point_doubts(point, checks) if checks and "sensitivity" in point else []
    return text + "".join(f"\n- **Warning: do not trust this threshold**: {doubt}." for doubt in doubts)


def _patients(facts):
    """The test subset's patients: corrected fraction, interval and call; cross-validation's figures."""
    table, model = facts.get("test_patients"), facts["model"]
    cv = ((facts.get("cross_validation") or {}).get("metrics")) or {}
    folds = [name for name in PATIENT_METRICS if f"cv.patients.{name}.mean" in cv]
    if (
        (table is None or not len(table))
        and not folds
        and not (facts["evaluation"].get("test") or {}).get("detection")
        and not model.get("patient_settings_from")
    ):
        return None
    rule = model.get("patient_call") or {}
    if "healthy_below" not in rule:  # a model saved before the healthy range
        rule = facts["parameters"].get("evaluation", {}).get("patients", {}).get("call") or {}
    if "healthy_below" not in rule:
        return None
    lines = ["## Patients\n", _call_paragraph(rule), *_rates_origin(model)]
    lines += _detection_lines(facts, cv)
    if table is not None and len(table):
        source = table["rates_from"].iloc[0]
        lines += [
            f"\nThe test subset's {len(table)} patients (cells counted at P ≥ "
            f"{model.get('count_threshold', facts['evaluation']['threshold'])}; "
            f"rates from {source}):\n",
            "| patient | cells | called Parasitized | labelled fraction | estimated fraction [95% interval] | call |",
            "|---|---:|---:|---:|---|---|",
        ]
        lines += [
            f"| {row.patient} | {row.cells} | {row.parasitized} | {row.labelled_fraction:.3f} | "
            + (
                "n/a"
                if row.fraction != row.fraction
                else f"{row.fraction:.3f} [{row.fraction_low:.3f}, {row.fraction_high:.3f}]"
            )
            + f" | {row.call} |"
            for row in table.sort_values("patient").itertuples()
        ]
        test = facts["evaluation"].get("test", {}).get("patients") or {}
        if test:
            lines.append("\nOn them: " + _patient_phrase(test) + ".")
    if folds:
        lines.append(
            "\nCross-validation (mean ± std over folds, held out): "
            + ", ".join(
                f"{name.replace('_', ' ')} {cv[f'cv.patients.{name}.mean']:.3f} ± {cv.get(f'cv.patients.{name}.std', float('nan')):.3f}"
                for name in folds
            )
            + "."
        )
    return "\n".join(lines)


def _rates_origin(model) -> list[str]:
    """Where the patient tables' rates and rule come from, for a model that took them from
    cross-validation (trained on every patient: no validation patients of its own)."""
    run_id = model.get("patient_settings_from")
    if not run_id:
        return []
    source = (model.get("reference_cells") or {}).get("source", f"cross-validation run {run_id}")
    return [
        f"\n**Where the rates come from: cross-validation run `{run_id}`.** This model has no validation "
        "patients: the sensitivity and specificity behind its corrected fractions, the spread between patients "
        f"(the healthy range), the counting threshold (P ≥ {model['count_threshold']:.4g}) and the call rule "
        f"above are those of {source}, the rule being the one cross-validation recommends."
    ]


def _call_paragraph(rule) -> str:
    """How a patient's fraction, interval and call are made, and what review means."""
    return (
        "A clinic decides per patient. For each patient, the share of its cells called Parasitized is corrected for "
        "the classifier's errors (with the sensitivity and specificity of the model's reference cells: the method "
        "of docs/patients.md) "
        "and given a 95% interval that counts the patient's cells, the uncertainty of those rates (Lang & "
        "Reiczigel 2014) and how much they vary between patients (a beta-binomial fitted to the reference "
        "patients). The call is **positive** when a healthy patient with as many cells would show as many called "
        f"Parasitized with a chance below {rule['healthy_below']:g} (the healthy range), else **negative** when the "
        f"estimate is below {rule['negative_below']:g}, else **review**: a microscopist reads the smear. Review "
        "is where doubt goes: the best automated microscopes reach 99% specificity per patient (Parasight, Eshel "
        "et al. 2017: 98.9–100%; Noul miLab: 98.8% on 2,201 febrile patients), and miLab's fell to 66.7% in "
        "automated mode alone until an operator reviewed its suspected calls. The archive's cells were cropped, "
        "not counted in a field of view: the labelled fraction is the truth for these cells, not the smear's "
        "parasitemia (docs/patients.md)."
    )


def _detection_lines(facts, cv) -> list[str]:
    """The detection limits of the test patients' smears (the sentence a clinician reads), and those of the
    cross-validation run the model claims."""
    lines = []
    detection = (facts["evaluation"].get("test") or {}).get("detection")
    if detection:
        lines.append(
            f"\n**Detection capability** (CLSI EP17-A2; smears of {detection['cells']:,} cells simulated from the "
            f"test patients' cells): {detection['sentence']} LoB {detection['lob']:.4f}, LoD "
            f"{_or_none(detection['lod'])}, LoQ {_or_none(detection['loq'])}."
        )
    if "cv.pooled.detection.lob" in cv:
        lines.append(
            "\nCross-validation, smears of out-of-fold cells: LoB "
            f"{cv['cv.pooled.detection.lob']:.4f}, LoD {_or_none(cv.get('cv.pooled.detection.lod'))}, LoQ "
            f"{_or_none(cv.get('cv.pooled.detection.loq'))}."
        )
    return lines


def _or_none(value) -> str:
    return "none of the grid" if value is None else f"{value:.4f}"


def _patient_phrase(metrics) -> str:
    return (
        f"review share {number(metrics['review_share'], 3)}, call sensitivity {number(metrics['call_sensitivity'], 3)} and "
        f"specificity {number(metrics['call_specificity'], 3)} on the others, patient ROC AUC {number(metrics['patient_roc_auc'], 3)}, "
        f"mean absolute error of the fraction {number(metrics['fraction_mae'], 3)}, interval coverage "
        f"{number(metrics['interval_coverage'], 3)}"
    )


def _calibration(facts):
    model, test = facts["model"], facts["evaluation"].get("test")
    text = f"## Calibration\n\n- Temperature T = {model.get('temperature', 1.0):.4f}"
    if test and test.get("ece") is not None:
        text += (
            f"; expected calibration error on test {test['ece']:.4f} "
            f"({test['ece_uncalibrated']:.4f} before temperature scaling)"
        )
    return text + "."


def _use_and_limits(facts):
    return (
        "## Intended use\n\n"
        "Decision support for trained microscopists reading Giemsa-stained thin blood smears: it ranks and flags "
        "segmented red-cell crops for review, and estimates the parasitized fraction of the cells it is given, with "
        "an interval and a call per patient. It is not a diagnosis: it does not count parasitaemia in a field of view, tell species "
        "or stages, nor read thick smears, and it has not been validated as a medical device.\n\n"
        "## Known limitations\n\n"
        "- Label noise: the NIH/NLM archive holds cells whose label is disputed; the cross-validation label audit "
        "(data/08_reporting/label_issues.csv) lists the suspects, and the top-loss figure shows some.\n"
        + (
            "- Trained on grayscale images: stain colour, which microscopists use, was not available to it.\n"
            if facts["grayscale"]
            else ""
        )
        + (
            f"- Small images: the model saw cells at {facts['ingestion']['image_size']} pixels, where the official archive's "
            "crops are 46 to 394 pixels a side (the project's development copy is reduced to 50×50 grayscale); its "
            "figures on full-resolution colour crops may differ.\n"
            if facts["ingestion"]["image_size"] <= 64
            else ""
        )
        + "- Patient variance: accuracy varies between patients (evaluation_metrics.json, per_patient); a new site's "
        "smears, stains or cameras may fall outside what it saw. Check it on local, labelled cells first.\n"
        "- Cells come pre-segmented: segmentation errors upstream are not caught here."
    )


def _reproduce(facts):
    """The command, with every parameter that differs from conf/base (``facts["overrides"]``: the command
    line's and conf/local's) and the profile the run used; lists and mappings go to conf/local, since
    ``--params`` cannot hold them."""
    claim = facts["parameters"].get("cross_validation_run_id")
    env = " --env all_patients" if claim else ""
    given = {**(facts.get("overrides") or {}), "profile": facts["profile"]}
    scalars = {k: v for k, v in given.items() if not isinstance(v, (list, dict))}
    others = {k: v for k, v in given.items() if isinstance(v, (list, dict))}
    shown = ",".join(f"{key}={'null' if value is None else value}" for key, value in sorted(scalars.items()))
    text = f'## Reproduce\n\n```\nkedro run --pipelines training{env} --params "{shown}"\n```\n\n'
    if others:
        text += (
            "and, in conf/local/parameters.yml (``--params`` cannot give a list), these dotted keys:\n\n```\n"
            + "\n".join(f"{key}: {value}" for key, value in sorted(others.items()))
            + "\n```\n\n"
        )
    return (
        text
        + "with this project at the version above; every parameter of the run is in the MLflow run's parameters"
        + (f" (run `{facts['run_id']}`)" if facts.get("run_id") else "")
        + ". On a CPU, the same seeds give the same model."
    )


def _with_interval(value, interval) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else f"{value:.4f}"


def _numbers(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
