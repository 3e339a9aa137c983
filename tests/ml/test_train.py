import math

import pytest
import torch

from malaria_pipeline.framework.parameters import PIPELINE_SWITCHES, training_config
from malaria_pipeline.ml import train
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.config import TrainConfig
from malaria_pipeline.ml.models import build_network, layer_groups
from malaria_pipeline.ml.train import HISTORY_COLUMNS, build_classifier, fit, plan_stages, train_classifier
from tests.helpers import TRAIN_PARAMS, tiny_data
from tests.helpers import train_config as quick


def test_one_cycle_steps_once_per_batch_rising_to_max_then_annealing_to_the_end_value(monkeypatch):
    recorded = []
    original = train.make_scheduler

    def spying(config, stage, optimizer, steps):
        scheduler = original(config, stage, optimizer, steps)
        step = scheduler.step

        def record(*args, **kwargs):
            step(*args, **kwargs)
            recorded.append(scheduler.get_last_lr()[0])

        scheduler.step = record
        recorded.append(scheduler.get_last_lr()[0])  # the LR of the first batch
        return scheduler

    monkeypatch.setattr(train, "make_scheduler", spying)
    config = quick(epochs=4, max_lr=0.02, pct_start=0.25, div_factor=10, final_div_factor=100)
    data = tiny_data()  # 36 training images, batches of 12: 3 steps per epoch
    train_classifier(data, config)
    lrs = recorded[:-1]  # the LR used by each of the 12 batches
    assert len(recorded) == 1 + 4 * 3
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.02 / 10)
    assert max(lrs) == pytest.approx(0.02, rel=1e-6) and peak == round(0.25 * 12) - 1
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    assert lrs[-1] == pytest.approx(0.02 / 10 / 100)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4])
def test_runs_of_a_few_batches_get_a_valid_one_cycle_schedule(total_steps):
    network = build_network("resnet9", width=4)
    optimizer = torch.optim.Adam(network.parameters())
    stage = plan_stages(quick(epochs=total_steps), n_groups=5)[0]
    scheduler = train.make_scheduler(quick(pct_start=0.25), stage, optimizer, steps_per_epoch=1)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)


def test_training_learns_and_reports_one_row_per_epoch():
    result = train_classifier(tiny_data(), quick(epochs=6, width=8))
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert set(result.history[0]) == set(HISTORY_COLUMNS)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 1 <= result.best_epoch <= 6


def test_same_seed_same_metrics_on_the_cpu():
    runs = [train_classifier(tiny_data(), quick(seed=5)).history for _ in range(2)]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


@pytest.mark.parametrize("architecture", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnets_train_one_epoch_on_the_cpu(architecture):
    result = train_classifier(tiny_data(count=16), quick(architecture=architecture, epochs=1, batch_size=8))
    row = result.history[0]
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and 0 <= row["accuracy"] <= 1


def test_stage_one_trains_only_the_head_and_stage_two_everything_with_discriminative_lrs(monkeypatch):
    config = quick(
        architecture="resnet18",
        pretrained=True,
        head_epochs=1,
        head_max_lr=0.01,
        epochs=1,
        max_lr=0.001,
        lr_ratio=100,
        batch_size=8,
    )
    data = tiny_data(count=16)
    # Not downloaded in the tests: the two stages are the same with random weights.
    monkeypatch.setattr(
        train,
        "build_network",
        lambda *args, **kwargs: build_network(*args, **{**kwargs, "pretrained": False}),
    )
    classifier = build_classifier(config, data)
    network = classifier.network
    groups = layer_groups(network, "resnet18")
    initial = {name: t.clone() for name, t in network.state_dict().items()}
    max_lrs = []
    original = train.make_scheduler

    def spying(config, stage, optimizer, steps):
        scheduler = original(config, stage, optimizer, steps)
        max_lrs.append([group["max_lr"] for group in optimizer.param_groups])
        return scheduler

    snapshots = []
    monkeypatch.setattr(train, "make_scheduler", spying)
    fit(
        classifier,
        data,
        config,
        on_epoch_end=lambda row: snapshots.append({n: t.clone() for n, t in network.state_dict().items()}),
    )

    after_head, after_full = snapshots
    backbone = [n for n in initial if not n.startswith("fc.")]
    assert all(torch.equal(after_head[n], initial[n]) for n in backbone)  # weights and batch-norm statistics
    assert not torch.equal(after_head["fc.weight"], initial["fc.weight"])
    assert not torch.equal(after_full["conv1.weight"], after_head["conv1.weight"])
    assert not torch.equal(after_full["layer4.1.conv2.weight"], after_head["layer4.1.conv2.weight"])

    assert max_lrs[0] == [pytest.approx(0.01)]
    expected = [0.001 / 100 ** (1 - i / (len(groups) - 1)) for i in range(len(groups))]
    assert max_lrs[1] == pytest.approx(expected) and max_lrs[1][0] == pytest.approx(1e-5)
    assert all(p.requires_grad for p in network.parameters())


def test_without_pretrained_weights_one_stage_trains_everything():
    stages = plan_stages(quick(epochs=3, head_epochs=2), n_groups=5)
    assert [(s.name, s.epochs, s.frozen) for s in stages] == [("full", 3, False)]


def test_resuming_with_other_parameters_is_refused(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    train_classifier(tiny_data(), quick(epochs=1), checkpoint=store)
    with pytest.raises(ValueError, match=r"belongs to another run \(it differs in \['epochs', 'stages'\]\)"):
        train_classifier(tiny_data(), quick(epochs=2, resume=True), checkpoint=store)


def test_keep_last_keeps_the_last_epoch():
    result = train_classifier(tiny_data(), quick(epochs=2, keep="last"))
    assert result.best_epoch == 2


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("optimizer", "sgd", "training.optimizer is 'sgd'"),
        ("keep", "first", "training.keep is 'first'"),
        ("epochs", 0, "training.epochs must be >= 1"),
        ("brightness", -0.1, r"training.brightness is -0.1: use a number from 0 \(off\) to 1$"),
        ("contrast", 1.5, r"training.contrast is 1.5: use a number from 0 \(off\) to 1$"),
        ("gamma", 1.0, r"training.gamma is 1.0: use a number from 0 \(off\) to 0.99$"),
        ("saturation", 2, r"training.saturation is 2: use a number from 0 \(off\) to 1$"),
        ("hue", 0.6, r"training.hue is 0.6: use a number from 0 \(off\) to 0.5$"),
        ("ema_decay", 1.0, r"training.ema_decay is 1.0: use a number between 0 and 1, or null \(off\)$"),
        ("ema_decay", 0, r"training.ema_decay is 0: use a number between 0 and 1, or null \(off\)$"),
    ],
)
def test_bad_parameters_are_named(knob, value, message):
    with pytest.raises(ValueError, match=message):
        quick(**{knob: value})


def test_an_unknown_training_key_is_refused_naming_the_nearest_known_one():
    with pytest.raises(
        ValueError, match=r"training\.max_Lr is not a parameter of training: did you mean training\.max_lr\?"
    ):
        training_config({**TRAIN_PARAMS, "max_Lr": 0.1})
    with pytest.raises(
        ValueError,
        match=r"training\.colour is not a parameter of training: The known ones are architecture, ",
    ):
        training_config({**TRAIN_PARAMS, "colour": "red"})
    with pytest.raises(
        ValueError,
        match=r"training\.calibrated is not a parameter of training: did you mean training\.calibrate\?",
    ):
        training_config({**TRAIN_PARAMS, "calibrated": True})
    assert training_config({**TRAIN_PARAMS, "max_lr": 0.1}).max_lr == 0.1


def test_a_missing_training_key_is_named_not_defaulted():
    params = {k: v for k, v in TRAIN_PARAMS.items() if k not in ("max_lr", "seed", "calibrate")}
    with pytest.raises(
        ValueError,
        match=r"^training is missing seed, max_lr, calibrate: see conf/base/parameters_training.yml$",
    ):
        training_config(params)


def test_the_config_holds_every_key_of_conf_base_and_no_default():
    import dataclasses

    import yaml

    from tests.helpers import PROJECT_ROOT

    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_training.yml").read_text())["training"]
    fields = dataclasses.fields(TrainConfig)
    # The loop's knobs, and the switches that the pipelines read around it: nothing the loop never reads.
    assert not {f.name for f in fields} & set(PIPELINE_SWITCHES)
    assert sorted([f.name for f in fields] + list(PIPELINE_SWITCHES)) == sorted(base) == sorted(TRAIN_PARAMS)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def test_a_checkpoint_written_on_another_device_type_resumes_with_a_warning(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=2, resume=True)

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_data(), config, checkpoint=store, on_epoch_end=interrupt)
    saved = store.load()
    assert (
        saved["generator_device"] == "cpu"
        and saved["generator"].numel() == torch.Generator().get_state().numel()
    )
    # What a CUDA run writes: a 16-byte Philox state for the batch generator, and the CUDA global state.
    store.save(
        {
            **saved,
            "generator": torch.zeros(16, dtype=torch.uint8),
            "generator_device": "cuda",
            "cuda_rng": torch.zeros(16, dtype=torch.uint8),
        }
    )
    with caplog.at_level("WARNING", logger="malaria_pipeline.ml.train"):
        resumed = train_classifier(tiny_data(), config, checkpoint=store)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert "belong to a cuda device and this run is on cpu" in caplog.text


# The ops after which a CUDA host waits for the device: a data-dependent shape or a value read back.
BLOCKING_OPS = {
    "aten.nonzero.default",
    "aten._local_scalar_dense.default",
    "aten.masked_select.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
}


def _blocking_ops(step, ignore: set[int]) -> list[str]:
    """The ops of ``step()`` that would block a CUDA host, seen by a dispatch mode on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensors = [
                a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)
            ]
            reads_back = str(func) in BLOCKING_OPS and not all(t.data_ptr() in ignore for t in tensors)
            masked = str(func).startswith(("aten.index.", "aten.index_put")) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in torch.utils._pytree.tree_leaves(args[1:])
            )
            if reads_back or masked:
                found.append(str(func))
            return func(*args, **(kwargs or {}))

    with Spy():
        step()
    return found


@pytest.mark.parametrize(
    "knobs",
    [{}, {"brightness": 0.2, "contrast": 0.2, "gamma": 0.2, "saturation": 0.2, "hue": 0.1, "ema_decay": 0.9}],
)
def test_a_training_step_never_waits_for_the_device(knobs):
    from malaria_pipeline.ml.averaging import make_average, update_average
    from malaria_pipeline.ml.loader import BatchLoader
    from malaria_pipeline.ml.train import make_optimizer, train_step

    config, data = quick(**knobs), tiny_data()
    classifier = build_classifier(config, data).set_speed(channels_last=True, bf16=False).train()
    optimizer = make_optimizer(config, plan_stages(config, 5)[0], layer_groups(classifier.network, "resnet9"))
    batches = BatchLoader(
        images=data.train_images,
        labels=data.train_labels,
        batch_size=12,
        generator=torch.Generator().manual_seed(0),
        augment=config.augmentation,
    ).forever()

    average = make_average(classifier, config.ema_decay) if config.ema_decay else None

    def step():
        images, labels = next(batches)
        train_step(classifier, optimizer, images, labels, config)
        if average is not None:  # as run_epoch does
            update_average(average, classifier)

    step()  # creates the optimizer's state
    # Adam reads its step counters, and update_average the average's n_averaged, which live on the CPU
    # whatever the device: no device sync.
    counters = {state["step"].data_ptr() for state in optimizer.state.values()}
    counters |= set() if average is None else {average.n_averaged.data_ptr()}
    assert _blocking_ops(step, ignore=counters) == []
    # The check sees what it must: a boolean mask (the quarter turns as they were once written) and a read-back.
    assert _blocking_ops(lambda: data.train_images[data.train_labels == 0], set()) == ["aten.index.Tensor"]
    assert _blocking_ops(lambda: data.train_labels.sum().item(), set()) == [
        "aten._local_scalar_dense.default"
    ]


@pytest.mark.parametrize("deterministic", [True, False])
def test_training_runs_under_the_determinism_it_is_given(deterministic):
    seen = []
    try:
        train_classifier(
            tiny_data(),
            quick(epochs=1, deterministic=deterministic),
            on_epoch_end=lambda row: seen.append(torch.are_deterministic_algorithms_enabled()),
        )
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [deterministic]


# Mutants found by mutmut (docs/mutation-testing.md)


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_resumed_run_has_the_whole_history_and_the_weights_of_an_uninterrupted_one(tmp_path, stop_after):
    # Everything must come back: weights, optimizer (Adam's moments), schedule, shuffling and dropout RNGs.
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=3, resume=True, keep="last")

    def interrupt(row):
        if row["epoch"] == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_data(), config, checkpoint=store, on_epoch_end=interrupt)
    assert store.load()["epoch"] == stop_after
    resumed = train_classifier(tiny_data(), config, checkpoint=store)
    uninterrupted = train_classifier(tiny_data(), quick(epochs=3, keep="last"))

    assert _without_seconds(resumed.history) == _without_seconds(
        uninterrupted.history
    )  # every epoch, every column
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    expected = uninterrupted.classifier.state_dict()
    assert all(
        torch.equal(tensor, expected[name]) for name, tensor in resumed.classifier.state_dict().items()
    )


def _snapshotting_fit(config, data):
    """Trains with :func:`fit`, keeping a copy of the classifier's weights after each epoch."""
    classifier = build_classifier(config, data)
    snapshots = {}

    def snapshot(row):
        snapshots[row["epoch"]] = {name: t.detach().clone() for name, t in classifier.state_dict().items()}

    return fit(classifier, data, config, on_epoch_end=snapshot), snapshots


def _same_weights(state, other):
    return state.keys() == other.keys() and all(torch.equal(state[name], other[name]) for name in state)


def test_keep_best_returns_the_weights_of_the_epoch_of_lowest_validation_loss():
    result, snapshots = _snapshotting_fit(quick(epochs=4), tiny_data())
    losses = {row["epoch"]: row["valid_loss"] for row in result.history}
    best, worst = min(losses, key=losses.get), max(losses, key=losses.get)
    assert best not in (1, 4) and worst != best  # this seed makes a case where best is neither first nor last
    assert result.best_epoch == best
    assert _same_weights(result.classifier.state_dict(), snapshots[best])
    assert not _same_weights(snapshots[best], snapshots[4]) and not _same_weights(
        snapshots[best], snapshots[worst]
    )


def test_keep_last_returns_the_weights_of_the_last_epoch():
    result, snapshots = _snapshotting_fit(quick(epochs=4, keep="last"), tiny_data())
    assert result.best_epoch == 4
    assert _same_weights(result.classifier.state_dict(), snapshots[4])
    best = min(result.history, key=lambda row: row["valid_loss"])["epoch"]
    assert best != 4 and not _same_weights(snapshots[best], snapshots[4])


def test_evaluating_in_batches_gives_what_one_batch_gives():
    import torch.nn.functional as F

    data = tiny_data(count=40)  # 10 validation images: batches of 3, 3, 3 and 1
    classifier = train_classifier(data, quick(epochs=2)).classifier
    images, labels = data.valid_images, data.valid_labels.clone()
    labels[[1, 4, 9]] = 1 - labels[[1, 4, 9]]  # three wrong answers, one in the last batch of 3
    with torch.no_grad():
        logits = classifier.eval()(images)
    loss, accuracy = (
        F.cross_entropy(logits, labels).item(),
        (logits.argmax(dim=1) == labels).float().mean().item(),
    )
    assert train.evaluate(classifier, images, labels, 1024) == (
        pytest.approx(loss, rel=1e-6),
        pytest.approx(accuracy),
    )
    assert train.evaluate(classifier, images, labels, 3) == (
        pytest.approx(loss, rel=1e-6),
        pytest.approx(accuracy),
    )
    assert train.evaluate(classifier, images, labels, 1) == (
        pytest.approx(loss, rel=1e-6),
        pytest.approx(accuracy),
    )
    assert 0 < accuracy < 1


def _interrupted_at(epoch, store, config, data=None):
    def interrupt(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(data or tiny_data(), config, checkpoint=store, on_epoch_end=interrupt)


def _spy_steps(monkeypatch):
    """Records each training step's images, labels, learning rate and returned loss."""
    steps = []
    original = train.train_step

    def spying(classifier, optimizer, images, labels, config):
        lr = optimizer.param_groups[-1]["lr"]
        loss = original(classifier, optimizer, images, labels, config)
        steps.append({"images": images.clone(), "labels": labels.clone(), "lr": lr, "loss": float(loss)})
        return loss

    monkeypatch.setattr(train, "train_step", spying)
    return steps


def test_a_resumed_run_ends_exactly_as_the_uninterrupted_run(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=3, resume=True)
    _interrupted_at(2, store, config)
    rows = []
    # Only the resumed run's log: where an earlier Kedro session set the logger to INFO, caplog also
    # holds the lines of the interrupted and the uninterrupted runs, whose epochs are the same text.
    caplog.clear()
    with caplog.at_level("INFO", logger="malaria_pipeline.ml.train"):
        resumed = fit(
            build_classifier(config, tiny_data()),
            tiny_data(),
            config,
            checkpoint=store,
            on_epoch_end=rows.append,
        )
    messages = list(caplog.messages)
    uninterrupted = train_classifier(tiny_data(), quick(epochs=3))
    assert uninterrupted.best_epoch == 2  # the kept epoch is one the checkpoint brings back
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    assert resumed.best_epoch == 2 and rows == resumed.history  # the restored rows are reported too
    expected, got = uninterrupted.classifier.state_dict(), resumed.classifier.state_dict()
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert f"Resuming from epoch 2 of 3 ({store.path})" in messages
    table = [
        f"{r['epoch']:>5} {r['stage']:>5} {r['train_loss']:>10.4f} {r['valid_loss']:>10.4f} {r['accuracy']:>8.4f} "
        f"{r['lr']:>9.2e} {r['seconds']:>7.1f}"
        for r in resumed.history
    ]
    assert [m for m in messages if m in table] == table  # the restored epochs are in the log's table too


def test_resume_without_a_store_or_a_checkpoint(tmp_path, caplog):
    with pytest.raises(ValueError) as error:
        train_classifier(tiny_data(), quick(epochs=1, resume=True))
    assert str(error.value) == "training.resume is true but no checkpoint store was given"
    store = CheckpointStore(tmp_path / "empty")
    with caplog.at_level("INFO", logger="malaria_pipeline.ml.train"):
        result = train_classifier(tiny_data(), quick(epochs=1, resume=True), checkpoint=store)
    assert [row["epoch"] for row in result.history] == [1]
    said = f"training.resume is true but {store.path} holds no checkpoint: starting afresh"
    assert [r.levelname for r in caplog.records if r.getMessage() == said] == ["INFO"]


def test_a_checkpoint_of_another_device_type_redraws_the_batches_from_seed_plus_epoch(
    tmp_path, monkeypatch, caplog
):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=2, resume=True, pad=0, flips=False, rotations=False)
    _interrupted_at(1, store, config)
    # A CPU-sized state written by an MPS run: the device type decides, not the size of the state.
    store.save({**store.load(), "generator_device": "mps"})
    steps = _spy_steps(monkeypatch)
    caplog.clear()
    with caplog.at_level("WARNING", logger="malaria_pipeline.ml.train"):
        train_classifier(tiny_data(), config, checkpoint=store)
    assert caplog.messages == [
        "The checkpoint's random states belong to a mps device and this run is on cpu: the batches and augmentations "
        "of the remaining epochs are drawn afresh (seed 43), so they differ from an uninterrupted run's"
    ]
    order = torch.randperm(36, generator=torch.Generator().manual_seed(42 + 1))
    assert torch.equal(steps[0]["images"], tiny_data().train_images[order[:12]])


def test_a_checkpoint_without_a_device_type_is_a_cpu_one(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=2, resume=True)
    _interrupted_at(1, store, config)
    saved = store.load()
    del saved["generator_device"]  # as checkpoints written before it was recorded
    store.save(saved)
    caplog.clear()
    with caplog.at_level("WARNING", logger="malaria_pipeline.ml.train"):
        resumed = train_classifier(tiny_data(), config, checkpoint=store)
    assert caplog.messages == []
    assert _without_seconds(resumed.history) == _without_seconds(
        train_classifier(tiny_data(), quick(epochs=2)).history
    )


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_kept_weights_are_those_of_the_best_or_last_epoch_in_plain_float32(keep):
    config, data = quick(epochs=3, keep=keep), tiny_data()
    classifier = build_classifier(config, data)
    snapshots = []
    result = fit(
        classifier,
        data,
        config,
        on_epoch_end=lambda row: snapshots.append({n: t.clone() for n, t in classifier.state_dict().items()}),
    )
    losses = [row["valid_loss"] for row in result.history]
    best = losses.index(min(losses)) + 1
    assert best == 2  # not the last epoch, so that best and last differ
    kept = best if keep == "best" else 3
    assert result.best_epoch == kept
    weights = result.classifier.state_dict()
    assert all(torch.equal(weights[name], snapshots[kept - 1][name]) for name in weights)
    assert result.classifier.channels_last is False and result.classifier.bf16 is False
    assert result.classifier.network.prep[0].weight.is_contiguous()


def test_the_training_log_is_a_table_of_the_epochs(caplog):
    with caplog.at_level("INFO", logger="malaria_pipeline.ml.train"):
        result = train_classifier(tiny_data(), quick(epochs=2))
    rows = [
        f"{r['epoch']:>5} {r['stage']:>5} {r['train_loss']:>10.4f} {r['valid_loss']:>10.4f} {r['accuracy']:>8.4f} "
        f"{r['lr']:>9.2e} {r['seconds']:>7.1f}"
        for r in result.history
    ]
    assert caplog.messages == [
        "Training resnet9 on cpu: 36 training and 12 validation images of (3, 16, 16), 3 steps of 12 per epoch, "
        "stages full (2 epochs, max LR 0.01)",
        "epoch stage train_loss valid_loss accuracy        lr seconds",
        *rows,
        f"Kept the weights of epoch {result.best_epoch} (best)",
    ]


def test_a_two_stage_run_logs_both_stages_and_says_bf16(monkeypatch, caplog):
    monkeypatch.setattr(
        train,
        "build_network",
        lambda *args, **kwargs: build_network(*args, **{**kwargs, "pretrained": False}),
    )
    config = quick(
        architecture="resnet18",
        pretrained=True,
        head_epochs=1,
        head_max_lr=0.01,
        epochs=1,
        max_lr=0.001,
        lr_ratio=100,
        batch_size=8,
        bf16=True,
    )
    with caplog.at_level("INFO", logger="malaria_pipeline.ml.train"):
        result = train_classifier(tiny_data(count=16), config)
    # the full stage: 0.001 / 100 ** (1 - i / 5) for the 6 groups
    assert caplog.messages[0] == (
        "Training resnet18 on cpu in bf16: 12 training and 4 validation images of (3, 16, 16), 1 steps of 8 per epoch, "
        "stages head (1 epochs, max LR 0.01), full (1 epochs, max LR 1e-05/2.5e-05/6.3e-05/0.00016/0.0004/0.001)"
    )
    assert [row["stage"] for row in result.history] == ["head", "full"]


def test_each_epoch_trains_on_a_seeded_permutation_and_reports_its_mean_loss_and_last_lr(monkeypatch):
    import time

    steps = _spy_steps(monkeypatch)
    started = time.perf_counter()
    result = train_classifier(tiny_data(), quick(epochs=2, pad=0, flips=False, rotations=False))
    elapsed = time.perf_counter() - started
    generator = torch.Generator().manual_seed(42)
    images = tiny_data().train_images
    for epoch in range(2):
        order = torch.randperm(36, generator=generator)
        for batch in range(3):
            assert torch.equal(
                steps[3 * epoch + batch]["images"], images[order[12 * batch : 12 * batch + 12]]
            )
        row, epoch_steps = result.history[epoch], steps[3 * epoch : 3 * epoch + 3]
        assert row["train_loss"] == pytest.approx(sum(s["loss"] for s in epoch_steps) / 3, rel=1e-6)
        assert row["lr"] == epoch_steps[-1]["lr"]
        assert 0 < row["seconds"] < elapsed


def test_training_batches_are_augmented(monkeypatch):
    steps = _spy_steps(monkeypatch)
    train_classifier(tiny_data(), quick(epochs=1, pad=0, flips=True, rotations=True))
    order = torch.randperm(36, generator=torch.Generator().manual_seed(42))
    originals = tiny_data().train_images[order[:12]]
    symmetries = [
        [t for k in range(4) for t in (x.rot90(k, (1, 2)), x.flip(2).rot90(k, (1, 2)))] for x in originals
    ]
    kinds = [
        next(i for i, s in enumerate(options) if torch.equal(s, y))
        for options, y in zip(symmetries, steps[0]["images"])
    ]
    assert len(set(kinds)) > 1  # each image gets one of the 8 symmetries, not all the identity


def test_training_runs_in_the_numeric_mode_of_its_config():
    config, data = quick(epochs=1, channels_last=True, bf16=True), tiny_data()
    classifier = build_classifier(config, data)
    seen = []
    fit(
        classifier,
        data,
        config,
        on_epoch_end=lambda row: seen.append((classifier.channels_last, classifier.bf16)),
    )
    assert seen == [(True, True)]


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a fourth CUDA device")
def test_training_on_a_device_this_machine_lacks_is_refused():
    with pytest.raises(
        ValueError, match=r"^training.device is 'cuda:3', but this machine has no such device"
    ):
        train_classifier(tiny_data(), quick(epochs=1, device="cuda:3"))


def test_compile_wraps_the_classifier(monkeypatch):
    compiled = []

    def compile_(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", compile_)
    config, data = quick(epochs=1, compile=True), tiny_data()
    classifier = build_classifier(config, data)
    fit(classifier, data, config)
    assert compiled == [classifier]


def test_resuming_with_other_speed_and_device_switches_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module: module)
    store = CheckpointStore(tmp_path / "checkpoint")
    _interrupted_at(1, store, quick(epochs=2, resume=True))
    switched = quick(
        epochs=2,
        resume=True,
        device="auto",
        bf16=True,
        channels_last=False,
        compile=True,
        deterministic=True,
        eval_batch_size=5,
        keep="last",
    )
    try:
        resumed = train_classifier(tiny_data(), switched, checkpoint=store)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [row["epoch"] for row in resumed.history] == [1, 2]


def test_resuming_on_other_data_names_the_shapes_that_differ(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    train_classifier(tiny_data(), quick(epochs=1), checkpoint=store)
    with pytest.raises(ValueError) as error:
        train_classifier(tiny_data(count=40), quick(epochs=1, resume=True), checkpoint=store)
    assert str(error.value) == (
        f"The checkpoint {store.path} belongs to another run (it differs in ['train_images', 'valid_images']). Resume "
        "with the parameters and data of the interrupted run, or set training.resume=false to start afresh."
    )


def test_a_two_stage_run_resumes_after_its_head_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train,
        "build_network",
        lambda *args, **kwargs: build_network(*args, **{**kwargs, "pretrained": False}),
    )
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(
        architecture="resnet18",
        pretrained=True,
        head_epochs=1,
        head_max_lr=0.01,
        epochs=2,
        max_lr=0.001,
        lr_ratio=100,
        batch_size=8,
        resume=True,
    )
    data = tiny_data(count=16)
    _interrupted_at(1, store, config, data)
    resumed = train_classifier(data, config, checkpoint=store)
    uninterrupted = train_classifier(data, quick(**{**vars(config), "resume": False}))
    assert [row["stage"] for row in resumed.history] == ["head", "full", "full"]
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)


def test_a_pretrained_network_without_head_epochs_trains_in_one_stage():
    stages = plan_stages(quick(pretrained=True, architecture="resnet18", head_epochs=0, epochs=2), n_groups=6)
    assert [(s.name, s.epochs, s.frozen) for s in stages] == [("full", 2, False)]


@pytest.mark.parametrize(
    ("name", "optimizer_class"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_the_optimizer_is_the_one_named_with_its_weight_decay(name, optimizer_class):
    config = quick(optimizer=name, weight_decay=0.03)
    network = build_network("resnet9", width=4)
    optimizer = train.make_optimizer(config, plan_stages(config, 5)[0], layer_groups(network, "resnet9"))
    assert type(optimizer) is optimizer_class
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.03]


@pytest.mark.parametrize(
    ("pct_start", "total", "expected"),
    [
        (0.25, 4, 0.375),  # at least 1.5 steps of warm-up
        (0.9, 4, 0.875),  # at most all but half a step
        (0.25, 2, 0.75),
        (0.3, 20, 0.3),
    ],
)
def test_the_warm_up_share_is_kept_between_one_and_a_half_steps_and_all_but_half_a_step(
    pct_start, total, expected
):
    def lrs(make):
        optimizer = torch.optim.Adam(build_network("resnet9", width=4).parameters())
        scheduler = make(optimizer)
        values = []
        for _ in range(total):
            values.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return values

    config = quick(pct_start=pct_start, max_lr=0.01, div_factor=25, final_div_factor=10000)
    stage = train.Stage("full", 1, [0.01], frozen=False)
    reference = lrs(
        lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=0.01,
            total_steps=total,
            pct_start=expected,
            div_factor=25,
            final_div_factor=10000,
        )
    )
    assert lrs(
        lambda optimizer: train.make_scheduler(config, stage, optimizer, steps_per_epoch=total)
    ) == pytest.approx(reference)


def test_the_classifier_is_built_for_the_data_and_asks_for_pretrained_weights(monkeypatch):
    data = tiny_data()
    data.class_names = ["Parasitized", "Uninfected", "Other"]
    classifier = build_classifier(quick(), data)
    assert classifier.image_size == 16 and classifier.network.head[-1].out_features == 3
    asked = []
    monkeypatch.setattr(
        train,
        "build_network",
        lambda *args, **kwargs: (
            asked.append(kwargs) or build_network(*args, **{**kwargs, "pretrained": False})
        ),
    )
    large = train.TrainData(
        train_images=torch.zeros(2, 3, 128, 128, dtype=torch.uint8),
        train_labels=torch.tensor([0, 1]),
        valid_images=torch.zeros(2, 3, 128, 128, dtype=torch.uint8),
        valid_labels=torch.tensor([0, 1]),
        mean=[0.5] * 3,
        std=[0.2] * 3,
        class_names=["Parasitized", "Uninfected"],
    )
    build_classifier(quick(architecture="resnet18", pretrained=True), large)
    assert asked[0]["pretrained"] is True and asked[0]["image_size"] == 128


def test_a_training_step_minimises_the_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    images, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        log_p = model(images).log_softmax(dim=1)
    # 0.2 of the target spread over the 2 classes: 0.9 on the label, 0.1 on the other
    target = torch.full((4, 2), 0.1)
    target[torch.arange(4), labels] = 0.9
    expected = -(target * log_p).sum(dim=1).mean()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train.train_step(model, optimizer, images, labels, quick(label_smoothing=0.2, grad_clip=None))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_on_a_tie_of_validation_loss_the_first_epoch_of_it_is_kept(monkeypatch):
    # Every epoch scores the same: the kept weights are those of the first epoch reaching the lowest
    # loss (as min() or argmin picks it), not a later one that merely equals it.
    monkeypatch.setattr(train, "evaluate", lambda *args: (0.5, 0.75))
    result, snapshots = _snapshotting_fit(quick(epochs=3), tiny_data())
    losses = [row["valid_loss"] for row in result.history]
    assert losses == [0.5, 0.5, 0.5]
    assert result.best_epoch == losses.index(min(losses)) + 1 == 1
    assert _same_weights(result.classifier.state_dict(), snapshots[1])
    assert not _same_weights(snapshots[1], snapshots[3])


@pytest.mark.parametrize("max_lrs", [[0.01, 0.04], [0.01, 0.02, 0.04]])
def test_each_parameter_group_warms_up_to_its_own_max_lr(max_lrs):
    config = quick(div_factor=25, final_div_factor=100)
    groups = [torch.nn.Linear(2, 2) for _ in max_lrs]
    optimizer = train.make_optimizer(config, train.Stage("full", 1, max_lrs, frozen=False), groups)
    train.make_scheduler(config, train.Stage("full", 1, max_lrs, frozen=False), optimizer, steps_per_epoch=8)
    assert [group["max_lr"] for group in optimizer.param_groups] == max_lrs
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([lr / 25 for lr in max_lrs])


def test_training_draws_no_progress_bar_where_stderr_is_not_a_terminal(capsys):
    # A log file or CI output gets no bar (tqdm's disable=None): under pytest stderr is not a terminal.
    train_classifier(tiny_data(), quick(epochs=1))
    err = capsys.readouterr().err
    assert "epoch 1" not in err and "batch" not in err


# Weight averaging (ema_decay)


def _ema_by_hand(monkeypatch, decay):
    """Records the weights after every training step and their moving average, by hand: a copy of the
    first step, then decay · average + (1 - decay) · weights; returns the averages at each epoch's end."""
    averages, at_epoch_end = [], {}
    original = train.train_step

    def spying(classifier, optimizer, images, labels, config):
        loss = original(classifier, optimizer, images, labels, config)
        now = {name: t.detach().clone() for name, t in classifier.state_dict().items()}
        last = averages[-1] if averages else now
        averages.append(
            {
                name: t if t.dtype == torch.long else decay * last[name] + (1 - decay) * t
                for name, t in now.items()
            }
        )
        return loss

    def epoch_end(row):
        at_epoch_end[row["epoch"]] = averages[-1]

    monkeypatch.setattr(train, "train_step", spying)
    return at_epoch_end, epoch_end


def _close(state, expected):
    return all(
        torch.allclose(tensor.float(), expected[name].float(), rtol=1e-5, atol=1e-6)
        for name, tensor in state.items()
        if not name.endswith("num_batches_tracked")
    )


@pytest.mark.parametrize("keep", ["best", "last"])
def test_with_ema_each_epoch_validates_and_keeps_the_moving_average_which_the_bundle_holds(monkeypatch, keep):
    from malaria_pipeline.ml.model_io import load_model, model_bundle

    config, data = quick(epochs=4, ema_decay=0.8, keep=keep, seed=1), tiny_data()
    at_epoch_end, epoch_end = _ema_by_hand(monkeypatch, 0.8)
    result = fit(build_classifier(config, data), data, config, on_epoch_end=epoch_end)
    for row in result.history:  # the validation figures are the average's
        reference = build_classifier(config, data)
        reference.load_state_dict(at_epoch_end[row["epoch"]])
        loss, accuracy = train.evaluate(reference, data.valid_images, data.valid_labels, 1024)
        assert row["valid_loss"] == pytest.approx(loss, rel=1e-5) and row["accuracy"] == pytest.approx(
            accuracy
        )
    kept = min(result.history, key=lambda row: row["valid_loss"])["epoch"] if keep == "best" else 4
    assert result.best_epoch == kept and (
        keep == "last" or kept != 4
    )  # this seed's best epoch is not the last
    assert _close(result.classifier.state_dict(), at_epoch_end[kept])
    assert not _close(result.classifier.state_dict(), at_epoch_end[1 if kept != 1 else 2])
    bundle = model_bundle(result.classifier, architecture="resnet9", network_args=config.network_args)
    loaded = load_model(bundle).network.state_dict()
    assert _close({f"network.{name}": t for name, t in loaded.items()}, at_epoch_end[kept])


def test_a_resumed_run_with_ema_ends_as_the_uninterrupted_one(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=2, resume=True, keep="last", ema_decay=0.7)
    _interrupted_at(1, store, config, tiny_data(count=32))
    assert int(store.load()["average"]["n_averaged"]) == 2  # two steps of 12 of the 24 training images
    resumed = train_classifier(tiny_data(count=32), config, checkpoint=store)
    uninterrupted = train_classifier(tiny_data(count=32), quick(epochs=2, keep="last", ema_decay=0.7))
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    expected = uninterrupted.classifier.state_dict()
    assert all(
        torch.equal(tensor, expected[name]) for name, tensor in resumed.classifier.state_dict().items()
    )


def test_calibrate_is_no_part_of_a_checkpoints_fingerprint():
    # temperature scaling comes after training: switching it must not stop a run from resuming
    from malaria_pipeline.ml.train import _fingerprint, plan_stages

    on, off = quick(calibrate=True), quick(calibrate=False)
    data = tiny_data()
    assert _fingerprint(on, data, plan_stages(on, 5)) == _fingerprint(off, data, plan_stages(off, 5))
    assert _fingerprint(on, data, plan_stages(on, 5)) != _fingerprint(quick(seed=1), data, plan_stages(on, 5))
