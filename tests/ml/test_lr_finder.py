import numpy as np
import pytest
import torch

from malaria_pipeline.ml.lr_finder import lr_range_test, suggest_lr
from malaria_pipeline.ml.train import build_classifier
from tests.helpers import tiny_data, train_config


def test_suggestion_is_the_steepest_fall_before_the_lowest_loss():
    lrs = list(np.logspace(-6, 0, 61))
    # flat, then falling fastest around 1e-3, lowest at 1e-2, then exploding
    losses = [1.0 - 0.8 / (1 + np.exp(-3 * (np.log10(lr) + 3))) + max(0.0, np.log10(lr) + 2) ** 2 for lr in lrs]
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
    sweep = lr_range_test(build_classifier(config, data), data, config, start_lr=1e-5, end_lr=10.0, num_batches=40)
    assert sweep.lrs[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(sweep.lrs, sweep.lrs[1:]))
    assert len(sweep.lrs) == len(sweep.losses) <= 40
    assert sweep.lrs[0] <= sweep.suggested_lr <= sweep.min_loss_lr * 1.0001


def test_too_short_a_sweep_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        suggest_lr([1e-3, 1e-2], [1.0, 0.5])


def test_the_sweep_stops_before_num_batches_at_the_first_smoothed_loss_above_four_times_the_lowest():
    config, data = train_config(batch_size=12), tiny_data()
    sweep = lr_range_test(build_classifier(config, data), data, config, start_lr=1e-4, end_lr=1e6, num_batches=60)
    assert len(sweep.lrs) < 60  # the learning rate reaches 1e6: the loss explodes long before
    lowest_so_far = np.minimum.accumulate(sweep.losses)
    last = sweep.losses[-1]
    assert not np.isfinite(last) or last > 4 * lowest_so_far[-1]
    assert all(loss <= 4 * lowest for loss, lowest in zip(sweep.losses[:-1], lowest_so_far[:-1]))  # not earlier
    assert sweep.lrs == pytest.approx([1e-4 * (1e10 ** (1 / 59)) ** step for step in range(len(sweep.lrs))])


@pytest.mark.parametrize(("bf16", "channels_last"), [(True, True), (False, False)])
def test_the_sweep_runs_in_the_numeric_mode_of_the_training_it_serves(bf16, channels_last):
    seen = []
    config, data = train_config(bf16=bf16, channels_last=channels_last), tiny_data()
    classifier = build_classifier(config, data)
    classifier.network.register_forward_pre_hook(
        lambda module, inputs: seen.append((torch.is_autocast_enabled("cpu"),
                                            inputs[0].is_contiguous(memory_format=torch.channels_last))))
    lr_range_test(classifier, data, config, num_batches=3)
    assert seen and set(seen) == {(bf16, channels_last)}
