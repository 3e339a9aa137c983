"""Data-parallel training on the CPU with Gloo: 2 processes started by torch.distributed's elastic
launcher, as `training.distributed.nproc_per_node=2` starts them (each test spawns its processes: 10 to
30 s). The 2-machine rehearsal through Kedro is in tests/pipelines/test_training.py."""

from __future__ import annotations

import functools
import hashlib

import pytest
import torch
from torch.distributed.launcher.api import elastic_launch

from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.distributed import (
    DistributedConfig,
    DistributedTrainingError,
    launch_training,
    run_workers,
)
from malaria_pipeline.ml.train import fit, train_classifier
from tests.helpers import (
    batch_norm_free_classifier,
    batch_norm_free_worker,
    free_port,
    stop_after_epoch,
    stop_after_epoch_and_linger,
    tiny_data,
    train_config,
)


def two_processes(**overrides) -> DistributedConfig:
    settings = {
        "nproc_per_node": 2,
        "nnodes": 1,
        "rdzv_endpoint": f"127.0.0.1:{free_port()}",
        "backend": "auto",
        "sync_batchnorm": False,
    }
    return DistributedConfig.from_params({**settings, **overrides})


def sha256(state: dict[str, torch.Tensor]) -> str:
    """Written out here: the names and raw bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(bytes(state[name].contiguous().reshape(-1).view(torch.uint8).tolist()))
    return digest.hexdigest()


def test_two_processes_end_with_bit_identical_weights_close_to_one_process():
    data, config = tiny_data(count=96), train_config(epochs=2, batch_size=12)
    results = run_workers(data, config, two_processes())
    assert set(results) == {0, 1}
    assert sha256(results[0]["state_dict"]) == results[0]["sha256"] == results[1]["sha256"]
    assert [row["epoch"] for row in results[0]["history"]] == [1, 2]

    # ResNet-9 normalizes each process's 6 images with their own batch statistics where one process
    # normalizes all 12, and draws the same dropout masks in both processes: the same task learnt,
    # not the same numbers. Both classify every validation cell right, with validation losses that
    # differ by less than 0.15 (measured: 0.218 and 0.280).
    single = train_classifier(data, config)
    parallel_history, single_history = results[0]["history"], single.history
    assert parallel_history[-1]["accuracy"] == single_history[-1]["accuracy"] == 1.0
    assert abs(parallel_history[-1]["valid_loss"] - single_history[-1]["valid_loss"]) < 0.15


def test_without_batch_norm_two_processes_on_halves_compute_one_process_on_the_whole_batch():
    # No batch norm, no dropout: DistributedDataParallel's mean of the two halves' gradients is the
    # gradient of the whole batch, so 2 epochs (12 Adam steps, gradient clipping, augmentation) end
    # where one process ends, to float32 rounding of the sums' order.
    data, config = tiny_data(count=96), train_config(epochs=2, batch_size=12)
    launch = two_processes().launch_config(node_rank=0)
    results = elastic_launch(launch, batch_norm_free_worker)(data, config)
    single = fit(batch_norm_free_classifier(), data, config)
    for name, tensor in single.classifier.state_dict().items():
        parallel = results[0]["state_dict"][name]
        assert torch.equal(parallel, results[1]["state_dict"][name]), name
        assert torch.allclose(parallel, tensor, atol=2e-5, rtol=1e-4), (name, (parallel - tensor).abs().max())
    # The logged training loss is the mean over the whole batch, as one process logs it: each process's
    # mean over its half, averaged over the two (not summed).
    for row, alone in zip(results[0]["history"], single.history, strict=True):
        assert row["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-4), row["epoch"]


@pytest.mark.slow  # two launches of two processes (about 20 s)
def test_a_failing_process_ends_the_run_with_its_error_and_the_run_resumes_where_it_stopped(tmp_path):
    data, config = tiny_data(count=96), train_config(epochs=3, batch_size=12)
    checkpoint = CheckpointStore(tmp_path / "checkpoint")
    with pytest.raises(
        DistributedTrainingError,
        match=r"Training process of rank 0 failed: "
        r"RuntimeError: stopped after epoch 2",
    ):
        launch_training(
            data,
            config,
            two_processes(),
            checkpoint=checkpoint,
            on_epoch_end=functools.partial(stop_after_epoch, 2),
        )
    assert torch.load(checkpoint.path, weights_only=True)["epoch"] == 2

    resumed = launch_training(
        data, train_config(epochs=3, batch_size=12, resume=True), two_processes(), checkpoint=checkpoint
    )
    uninterrupted = launch_training(data, config, two_processes())
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert sha256(resumed.classifier.state_dict()) == sha256(uninterrupted.classifier.state_dict())
    assert resumed.history[2]["valid_loss"] == uninterrupted.history[2]["valid_loss"]


def test_the_error_reported_is_the_cause_even_when_a_peer_exits_first():
    # rank 0 raises after epoch 1 and then takes 5 s to exit; rank 1 fails at once in its next
    # collective ("Connection closed by peer"), so the launcher sees rank 1's exit first and ends rank 0
    data, config = tiny_data(count=48), train_config(epochs=2, batch_size=12)
    with pytest.raises(
        DistributedTrainingError,
        match=r"^Training process of rank 0 failed: RuntimeError: stopped after epoch 1$",
    ):
        launch_training(
            data, config, two_processes(), on_epoch_end=functools.partial(stop_after_epoch_and_linger, 1, 5.0)
        )


def test_bad_settings_are_refused_with_the_parameter_before_any_process_starts():
    with pytest.raises(
        ValueError,
        match=r"training.distributed.nproc_per_Node is not a parameter of "
        r"training.distributed: did you mean training.distributed.nproc_per_node\?",
    ):
        DistributedConfig.from_params({"nproc_per_Node": 2})
    with pytest.raises(ValueError, match="training.distributed.backend is 'mpi': use auto"):
        two_processes(backend="mpi")
    with pytest.raises(ValueError, match=r"sync_batchnorm needs CUDA GPUs .* trains on cpu: set it to false"):
        launch_training(tiny_data(), train_config(), two_processes(sync_batchnorm=True))
    with pytest.raises(
        ValueError,
        match=r"training.batch_size \(9\) must be a multiple of the number of processes "
        r"\(4\): each trains on an equal slice of every batch",
    ):
        launch_training(tiny_data(), train_config(batch_size=9), two_processes(nnodes=2))
    assert not two_processes(nproc_per_node=1).enabled and two_processes(nproc_per_node=1, nnodes=2).enabled
