import math

import pytest
import torch

from malaria_pipeline.ml import train
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.models import build_network, layer_groups
from malaria_pipeline.ml.train import HISTORY_COLUMNS, TrainConfig, TrainData, fit, plan_stages, train_classifier

CPU = torch.device("cpu")


def tiny_data(count=48, size=16, seed=0) -> TrainData:
    """Parasitized cells (class 0) carry a dark spot; uninfected ones don't."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(120, 200, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 2
    images[labels == 0, :, 5:9, 5:9] = 10
    split = count * 3 // 4
    return TrainData(images[:split], labels[:split], images[split:], labels[split:], [0.6] * 3, [0.2] * 3,
                     ["Parasitized", "Uninfected"])


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 12, "max_lr": 0.01, "pad": 2, **overrides})


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
    fit(build_network("resnet9", width=4), "resnet9", data, config, CPU)
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
    stage = plan_stages(quick(epochs=total_steps), n_groups=5, two_stage=False)[0]
    scheduler = train.make_scheduler(quick(pct_start=0.25), stage, optimizer, steps_per_epoch=1)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)


def test_training_learns_and_reports_one_row_per_epoch():
    result = fit(build_network("resnet9", width=8), "resnet9", tiny_data(), quick(epochs=6), CPU)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert set(result.history[0]) == set(HISTORY_COLUMNS)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 1 <= result.best_epoch <= 6


def test_same_seed_same_metrics_on_the_cpu():
    runs = [
        train_classifier("resnet9", {"width": 4}, tiny_data(), quick(seed=5), CPU, num_classes=2).history
        for _ in range(2)
    ]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


@pytest.mark.parametrize("architecture", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnets_train_one_epoch_on_the_cpu(architecture):
    result = train_classifier(architecture, {}, tiny_data(count=16), quick(epochs=1, batch_size=8), CPU, num_classes=2)
    row = result.history[0]
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and 0 <= row["accuracy"] <= 1


def test_stage_one_trains_only_the_head_and_stage_two_everything_with_discriminative_lrs(monkeypatch):
    network = build_network("resnet18", image_size=16)
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
    config = quick(head_epochs=1, head_max_lr=0.01, epochs=1, max_lr=0.001, lr_ratio=100, batch_size=8)
    fit(network, "resnet18", tiny_data(count=16), config, CPU, two_stage=True,
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
    stages = plan_stages(quick(epochs=3, head_epochs=2), n_groups=5, two_stage=False)
    assert [(s.name, s.epochs, s.frozen) for s in stages] == [("full", 3, False)]


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    config = quick(epochs=3)

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier("resnet9", {"width": 4}, tiny_data(), config, CPU, num_classes=2,
                         checkpoint=store, on_epoch_end=interrupt)
    assert store.load()["epoch"] == 1
    resumed = train_classifier("resnet9", {"width": 4}, tiny_data(), config, CPU, num_classes=2,
                               checkpoint=store, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    uninterrupted = train_classifier("resnet9", {"width": 4}, tiny_data(), config, CPU, num_classes=2)
    assert resumed.history[0]["train_loss"] == uninterrupted.history[0]["train_loss"]


def test_resuming_with_other_parameters_is_refused(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    train_classifier("resnet9", {"width": 4}, tiny_data(), quick(epochs=1), CPU, num_classes=2, checkpoint=store)
    with pytest.raises(ValueError, match=r"belongs to another run \(it differs in \['epochs', 'stages'\]\)"):
        train_classifier("resnet9", {"width": 4}, tiny_data(), quick(epochs=2), CPU, num_classes=2,
                         checkpoint=store, resume=True)


def test_keep_last_keeps_the_last_epoch():
    result = fit(build_network("resnet9", width=4), "resnet9", tiny_data(), quick(epochs=2, keep="last"), CPU)
    assert result.best_epoch == 2


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("optimizer", "sgd", "training.optimizer is 'sgd'"),
    ("keep", "first", "training.keep is 'first'"),
    ("epochs", 0, "training.epochs must be >= 1"),
])
def test_bad_parameters_are_named(knob, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{knob: value})


def test_an_unknown_training_key_is_refused_naming_the_nearest_known_one():
    from malaria_pipeline.ml.train import TrainConfig

    with pytest.raises(ValueError, match=r"training\.max_Lr is not a parameter of training: did you mean training\.max_lr\?"):
        TrainConfig.from_params({"epochs": 2, "max_Lr": 0.1})
    with pytest.raises(ValueError, match=r"training\.colour is not a parameter of training: The known ones are architecture, "):
        TrainConfig.from_params({"colour": "red"})
    assert TrainConfig.from_params({"max_lr": 0.1, "architecture": "resnet9", "width": 8}).max_lr == 0.1
