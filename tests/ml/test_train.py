import math

import pytest
import torch

from malaria_pipeline.ml import train
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.models import build_network, layer_groups
from malaria_pipeline.ml.train import HISTORY_COLUMNS, TrainConfig, build_classifier, fit, plan_stages, train_classifier
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
    runs = [
        train_classifier(tiny_data(), quick(seed=5)).history
        for _ in range(2)
    ]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


@pytest.mark.parametrize("architecture", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnets_train_one_epoch_on_the_cpu(architecture):
    result = train_classifier(tiny_data(count=16), quick(architecture=architecture, epochs=1, batch_size=8))
    row = result.history[0]
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and 0 <= row["accuracy"] <= 1


def test_stage_one_trains_only_the_head_and_stage_two_everything_with_discriminative_lrs(monkeypatch):
    config = quick(architecture="resnet18", pretrained=True, head_epochs=1, head_max_lr=0.01, epochs=1,
                   max_lr=0.001, lr_ratio=100, batch_size=8)
    data = tiny_data(count=16)
    # Not downloaded in the tests: the two stages are the same with random weights.
    monkeypatch.setattr(train, "build_network", lambda *args, **kwargs: build_network(*args, **{**kwargs, "pretrained": False}))
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
    fit(classifier, data, config,
        on_epoch_end=lambda row: snapshots.append({n: t.clone() for n, t in network.state_dict().items()}))

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


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("optimizer", "sgd", "training.optimizer is 'sgd'"),
    ("keep", "first", "training.keep is 'first'"),
    ("epochs", 0, "training.epochs must be >= 1"),
])
def test_bad_parameters_are_named(knob, value, message):
    with pytest.raises(ValueError, match=message):
        quick(**{knob: value})


def test_an_unknown_training_key_is_refused_naming_the_nearest_known_one():
    with pytest.raises(ValueError, match=r"training\.max_Lr is not a parameter of training: did you mean training\.max_lr\?"):
        TrainConfig.from_params({**TRAIN_PARAMS, "max_Lr": 0.1})
    with pytest.raises(ValueError, match=r"training\.colour is not a parameter of training: The known ones are architecture, "):
        TrainConfig.from_params({**TRAIN_PARAMS, "colour": "red"})
    assert TrainConfig.from_params({**TRAIN_PARAMS, "max_lr": 0.1}).max_lr == 0.1


def test_a_missing_training_key_is_named_not_defaulted():
    params = {k: v for k, v in TRAIN_PARAMS.items() if k not in ("max_lr", "seed")}
    with pytest.raises(ValueError, match=r"^training is missing seed, max_lr: see conf/base/parameters_training.yml$"):
        TrainConfig.from_params(params)


def test_the_config_holds_every_key_of_conf_base_and_no_default():
    import dataclasses

    import yaml

    from tests.helpers import PROJECT_ROOT

    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_training.yml").read_text())["training"]
    fields = dataclasses.fields(TrainConfig)
    assert sorted(f.name for f in fields) == sorted(base) == sorted(TRAIN_PARAMS)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def test_a_checkpoint_written_on_another_device_type_resumes_with_a_warning(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=2, resume=True)

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_data(), config, checkpoint=store, on_epoch_end=interrupt)
    saved = store.load()
    assert saved["generator_device"] == "cpu" and saved["generator"].numel() == torch.Generator().get_state().numel()
    # What a CUDA run writes: a 16-byte Philox state for the batch generator, and the CUDA global state.
    store.save({**saved, "generator": torch.zeros(16, dtype=torch.uint8), "generator_device": "cuda",
                "cuda_rng": torch.zeros(16, dtype=torch.uint8)})
    with caplog.at_level("WARNING", logger="malaria_pipeline.ml.train"):
        resumed = train_classifier(tiny_data(), config, checkpoint=store)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert "belong to a cuda device and this run is on cpu" in caplog.text


# The ops after which a CUDA host waits for the device: a data-dependent shape or a value read back.
BLOCKING_OPS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.masked_select.default",
                "aten.is_nonzero.default", "aten.equal.default", "aten._unique2.default", "aten.unique_dim.default",
                "aten.repeat_interleave.Tensor"}


def _blocking_ops(step, ignore: set[int]) -> list[str]:
    """The ops of ``step()`` that would block a CUDA host, seen by a dispatch mode on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            reads_back = str(func) in BLOCKING_OPS and not all(t.data_ptr() in ignore for t in tensors)
            masked = str(func).startswith(("aten.index.", "aten.index_put")) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in torch.utils._pytree.tree_leaves(args[1:]))
            if reads_back or masked:
                found.append(str(func))
            return func(*args, **(kwargs or {}))

    with Spy():
        step()
    return found


def test_a_training_step_never_waits_for_the_device():
    from malaria_pipeline.ml.loader import BatchLoader
    from malaria_pipeline.ml.train import make_optimizer, train_step

    config, data = quick(), tiny_data()
    classifier = build_classifier(config, data).set_speed(channels_last=True, bf16=False).train()
    optimizer = make_optimizer(config, plan_stages(config, 5)[0], layer_groups(classifier.network, "resnet9"))
    batches = BatchLoader(data.train_images, data.train_labels, 12, torch.Generator().manual_seed(0),
                          config.augmentation).forever()

    def step():
        images, labels = next(batches)
        train_step(classifier, optimizer, images, labels, config)

    step()  # creates the optimizer's state
    # Adam reads its step counters, which live on the CPU whatever the device: no device sync.
    counters = {state["step"].data_ptr() for state in optimizer.state.values()}
    assert _blocking_ops(step, ignore=counters) == []
    # The check sees what it must: a boolean mask (the quarter turns as they were once written) and a read-back.
    assert _blocking_ops(lambda: data.train_images[data.train_labels == 0], set()) == ["aten.index.Tensor"]
    assert _blocking_ops(lambda: data.train_labels.sum().item(), set()) == ["aten._local_scalar_dense.default"]


@pytest.mark.parametrize("deterministic", [True, False])
def test_training_runs_under_the_determinism_it_is_given(deterministic):
    seen = []
    try:
        train_classifier(tiny_data(), quick(epochs=1, deterministic=deterministic),
                         on_epoch_end=lambda row: seen.append(torch.are_deterministic_algorithms_enabled()))
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [deterministic]


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

    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)  # every epoch, every column
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    expected = uninterrupted.classifier.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in resumed.classifier.state_dict().items())


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
    assert not _same_weights(snapshots[best], snapshots[4]) and not _same_weights(snapshots[best], snapshots[worst])


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
    loss, accuracy = F.cross_entropy(logits, labels).item(), (logits.argmax(dim=1) == labels).float().mean().item()
    assert train.evaluate(classifier, images, labels, 1024) == (pytest.approx(loss, rel=1e-6), pytest.approx(accuracy))
    assert train.evaluate(classifier, images, labels, 3) == (pytest.approx(loss, rel=1e-6), pytest.approx(accuracy))
    assert train.evaluate(classifier, images, labels, 1) == (pytest.approx(loss, rel=1e-6), pytest.approx(accuracy))
    assert 0 < accuracy < 1
