import numpy as np
import pytest
import torch

from malaria_pipeline.ml.lr_finder import lr_range_test, suggest_lr
from malaria_pipeline.ml.train import build_classifier
from tests.helpers import tiny_data, train_config


def test_suggestion_is_the_steepest_fall_before_the_lowest_loss():
    lrs = list(np.logspace(-6, 0, 61))
    # flat, then falling fastest around 1e-3, lowest at 1e-2, then exploding
    losses = [
        1.0 - 0.8 / (1 + np.exp(-3 * (np.log10(lr) + 3))) + max(0.0, np.log10(lr) + 2) ** 2 for lr in lrs
    ]
    suggested, lowest = suggest_lr(lrs, losses)
    assert suggested == pytest.approx(1e-3, rel=0.3)
    assert lowest == pytest.approx(lrs[int(np.argmin(losses))])


def test_noise_at_the_start_of_the_sweep_is_not_taken_for_the_steepest_fall():
    lrs = list(np.logspace(-6, 0, 200))
    rng = np.random.default_rng(0)
    # a steady fall per decade, steeper between 1e-3 and 1e-2, after a noisy start (as a running average gives)
    losses = [1.2 - 0.1 * (np.log10(lr) + 6) - 0.15 * np.clip(np.log10(lr) + 3, 0, 1) for lr in lrs]
    losses = [loss + (rng.normal(0, 0.05) if i < 15 else 0.0) for i, loss in enumerate(losses)]
    losses[-20:] = [losses[-21] + 0.1 * k for k in range(20)]  # explodes at the end
    suggested, _ = suggest_lr(lrs, losses)
    assert 1e-3 <= suggested <= 1e-2


def test_sweep_raises_the_lr_every_batch_and_stops_when_the_loss_explodes():
    config, data = train_config(batch_size=12), tiny_data()
    sweep = lr_range_test(
        build_classifier(config, data), data, config, start_lr=1e-5, end_lr=10.0, num_batches=40
    )
    assert sweep.lrs[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(sweep.lrs, sweep.lrs[1:]))
    assert len(sweep.lrs) == len(sweep.losses) <= 40
    assert sweep.lrs[0] <= sweep.suggested_lr <= sweep.min_loss_lr * 1.0001


def test_too_short_a_sweep_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        suggest_lr([1e-3, 1e-2], [1.0, 0.5])


def test_the_sweep_stops_before_num_batches_at_the_first_smoothed_loss_above_four_times_the_lowest():
    config, data = train_config(batch_size=12), tiny_data()
    sweep = lr_range_test(
        build_classifier(config, data), data, config, start_lr=1e-4, end_lr=1e6, num_batches=60
    )
    assert len(sweep.lrs) < 60  # the learning rate reaches 1e6: the loss explodes long before
    lowest_so_far = np.minimum.accumulate(sweep.losses)
    last = sweep.losses[-1]
    assert not np.isfinite(last) or last > 4 * lowest_so_far[-1]
    assert all(
        loss <= 4 * lowest for loss, lowest in zip(sweep.losses[:-1], lowest_so_far[:-1])
    )  # not earlier
    assert sweep.lrs == pytest.approx([1e-4 * (1e10 ** (1 / 59)) ** step for step in range(len(sweep.lrs))])


@pytest.mark.parametrize(("bf16", "channels_last"), [(True, True), (False, False)])
def test_the_sweep_runs_in_the_numeric_mode_of_the_training_it_serves(bf16, channels_last):
    seen = []
    config, data = train_config(bf16=bf16, channels_last=channels_last), tiny_data()
    classifier = build_classifier(config, data)
    classifier.network.register_forward_pre_hook(
        lambda module, inputs: seen.append(
            (torch.is_autocast_enabled("cpu"), inputs[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    lr_range_test(classifier, data, config, num_batches=3)
    assert seen and set(seen) == {(bf16, channels_last)}


# Mutants found by mutmut (docs/mutation-testing.md)


def _spy_sweep_steps(monkeypatch):
    from malaria_pipeline.ml import lr_finder

    steps = []
    original = lr_finder.train_step

    def spying(classifier, optimizer, images, labels, config):
        loss = original(classifier, optimizer, images, labels, config)
        steps.append(
            {
                "images": images.clone(),
                "lr": optimizer.param_groups[0]["lr"],
                "loss": float(loss),
                "speed": (classifier.channels_last, classifier.bf16),
            }
        )
        return loss

    monkeypatch.setattr(lr_finder, "train_step", spying)
    return steps


def test_the_sweep_is_geometric_from_start_to_end_and_smooths_the_loss_with_bias_correction(monkeypatch):
    steps = _spy_sweep_steps(monkeypatch)
    config, data = train_config(), tiny_data()
    sweep = lr_range_test(
        build_classifier(config, data), data, config, start_lr=1e-5, end_lr=1e-3, num_batches=5
    )
    assert sweep.lrs == pytest.approx([1e-5, 10**-4.5, 1e-4, 10**-3.5, 1e-3], rel=1e-9)
    assert [s["lr"] for s in steps] == sweep.lrs
    average, expected = 0.0, []
    for k, step in enumerate(steps):
        average = 0.98 * average + 0.02 * step["loss"]
        expected.append(average / (1 - 0.98 ** (k + 1)))
    assert sweep.losses == pytest.approx(expected, rel=1e-9)


def test_the_sweep_defaults_to_a_million_fold_range_over_200_batches():
    config, data = train_config(), tiny_data()
    sweep = lr_range_test(build_classifier(config, data), data, config, num_batches=3)
    assert sweep.lrs == pytest.approx([1e-6, 1e-3, 1.0], rel=1e-9)
    sweep = lr_range_test(
        build_classifier(config, data), data, config, start_lr=1e-7, end_lr=1e-6
    )  # never diverges
    assert len(sweep.lrs) == 200 and sweep.lrs[-1] == pytest.approx(1e-6, rel=1e-9)


def test_the_sweep_stops_at_the_first_loss_above_four_times_the_lowest_and_says_so(caplog):
    config, data = train_config(batch_size=12), tiny_data()
    with caplog.at_level("INFO", logger="malaria_pipeline.ml.lr_finder"):
        sweep = lr_range_test(
            build_classifier(config, data), data, config, start_lr=1e-5, end_lr=10.0, num_batches=60
        )
    lowest = [min(sweep.losses[: k + 1]) for k in range(len(sweep.losses))]
    assert len(sweep.lrs) < 60 and sweep.losses[-1] > 4 * lowest[-1]
    assert all(loss <= 4 * low for loss, low in zip(sweep.losses[:-1], lowest[:-1]))
    assert caplog.messages == [
        f"Loss diverged at LR {sweep.lrs[-1]:.2e} after {len(sweep.lrs)} batches: sweep stopped",
        f"LR range test: steepest descent at {sweep.suggested_lr:.2e}, lowest loss at {sweep.min_loss_lr:.2e}; "
        f"suggested max LR {sweep.suggested_lr:.2e}",
    ]


def test_the_sweep_draws_seeded_augmented_batches_in_the_numeric_mode_of_its_config(monkeypatch):
    steps = _spy_sweep_steps(monkeypatch)
    config, data = (
        train_config(pad=0, flips=False, rotations=False, channels_last=True, bf16=True),
        tiny_data(),
    )
    lr_range_test(build_classifier(config, data), data, config, start_lr=1e-5, end_lr=1e-4, num_batches=4)
    generator = torch.Generator().manual_seed(42)
    first, second = torch.randperm(36, generator=generator), torch.randperm(36, generator=generator)
    expected = [first[:12], first[12:24], first[24:], second[:12]]  # 3 batches a pass, then a new order
    assert all(torch.equal(s["images"], data.train_images[rows]) for s, rows in zip(steps, expected))
    assert {s["speed"] for s in steps} == {(True, True)}
    steps.clear()
    config = train_config(pad=0, flips=True, rotations=True)
    lr_range_test(build_classifier(config, data), data, config, start_lr=1e-5, end_lr=1e-4, num_batches=3)
    assert not torch.equal(
        steps[0]["images"], data.train_images[first[:12]]
    )  # the same rows, turned and flipped


def test_a_sweep_on_a_device_this_machine_lacks_is_refused():
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a fourth CUDA device")
    config = train_config(device="cuda:3")
    with pytest.raises(ValueError, match=r"^training.device is 'cuda:3'"):
        lr_range_test(build_classifier(train_config(), tiny_data()), tiny_data(), config, num_batches=3)


def _suggestion_by_hand(lrs, losses, skip_start=0.1, window=5):
    """The rule of suggest_lr's docstring, point by point: the steepest slope per log-LR, each measured
    between the points ``half`` before and after, between the first skip_start of the sweep and the lowest."""
    import math

    lowest = min(range(len(losses)), key=lambda i: (losses[i], i))
    first = int(skip_start * len(lrs))
    half = min(window, max(1, (lowest - first) // 4))
    centres = list(range(first + half, lowest - half + 1)) or list(range(1, max(2, lowest)))
    if not range(first + half, lowest - half + 1):
        half = 1
    slope = {
        c: (losses[c + half] - losses[c - half]) / (math.log(lrs[c + half]) - math.log(lrs[c - half]))
        for c in centres
    }
    return lrs[min(centres, key=lambda c: (slope[c], c))], lrs[lowest]


def test_the_suggestion_follows_its_rule_on_random_sweeps():
    rng = np.random.default_rng(0)
    for length in (3, 7, 15, 40, 120):
        for _ in range(20):
            lrs = sorted(10 ** rng.uniform(-6, 0, length))  # uneven steps: the slope is per log-LR
            losses = list(np.cumsum(rng.normal(0, 1, length)))
            assert suggest_lr(lrs, losses) == pytest.approx(_suggestion_by_hand(lrs, losses))


def test_a_sweep_whose_loss_bottoms_out_at_once_falls_back_to_neighbouring_points():
    lrs = list(np.logspace(-3, -1, 3))
    assert suggest_lr(lrs, [1.0, 0.5, 0.8]) == pytest.approx((lrs[1], lrs[1]))
    lrs = list(np.logspace(-6, 0, 15))
    # first = 1, lowest = 3: the one centre, 2, has a gentler slope than point 1 would
    losses = [1.0, 0.5, 0.45, 0.4] + [0.5 + 0.1 * k for k in range(11)]
    assert suggest_lr(lrs, losses) == pytest.approx((lrs[2], lrs[3]))


def test_the_sweep_draws_no_progress_bar_where_stderr_is_not_a_terminal(capsys):
    # A log file or CI output gets no bar (tqdm's disable=None): under pytest stderr is not a terminal.
    config, data = train_config(), tiny_data()
    lr_range_test(build_classifier(config, data), data, config, start_lr=1e-5, end_lr=1e-4, num_batches=3)
    err = capsys.readouterr().err
    assert "LR sweep" not in err and "batch" not in err


def test_a_loss_at_its_minimum_never_stops_the_sweep_even_at_zero():
    # The sweep stops once the smoothed loss *exceeds* diverge times its lowest: a classifier that already
    # fits every batch (logits +-1e4 for class 0, cross-entropy exactly 0.0) sweeps all its batches.
    config, data = train_config(label_smoothing=0.0), tiny_data()
    data.train_labels = torch.zeros_like(data.train_labels)
    classifier = build_classifier(config, data)
    head = classifier.network.head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1e4, -1e4]))
    sweep = lr_range_test(classifier, data, config, start_lr=1e-5, end_lr=1e-4, num_batches=5)
    assert sweep.losses == [0.0] * 5
    assert len(sweep.lrs) == 5
