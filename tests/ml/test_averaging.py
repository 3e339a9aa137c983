import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from malaria_pipeline.ml.averaging import make_average, update_average


def _network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _train_a_little(network, steps):
    """Yields after each of ``steps`` SGD steps (batch norm in training mode: its statistics move too)."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    for step in range(steps):
        inputs = torch.randn(8, 3, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        network(inputs).square().mean().backward()
        optimizer.step()
        yield step


def test_the_average_copies_the_first_step_then_keeps_decay_of_itself_at_each_step():
    network = _network()
    average = make_average(network, decay=0.9)
    expected = None
    for _ in _train_a_little(network, 4):
        update_average(average, network)
        now = {name: t.detach().clone() for name, t in network.state_dict().items()}
        expected = (
            now
            if expected is None
            else {
                name: now[name]
                if name.endswith("num_batches_tracked")
                else 0.9 * expected[name] + 0.1 * now[name]
                for name in now
            }
        )
    got = average.module.state_dict()
    for name, tensor in expected.items():
        if name.endswith("num_batches_tracked"):
            continue  # an integer: torch's EMA truncates it (checked against torch below)
        torch.testing.assert_close(got[name], tensor, rtol=1e-6, atol=1e-7)
    assert int(average.n_averaged) == 4
    assert "1.running_mean" in expected and not torch.equal(expected["1.running_mean"], torch.zeros(4))


def test_an_update_is_torchs_update_parameters_bit_for_bit():
    network = _network()
    ours = make_average(network, decay=0.8)
    torchs = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    for _ in _train_a_little(network, 3):
        update_average(ours, network)
        torchs.update_parameters(network)
    expected = torchs.state_dict()
    assert ours.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in ours.state_dict().items())
    assert ours.n_averaged.device.type == "cpu"


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_make_average_passes_its_decay_on(decay):
    network = _network()
    average = make_average(network, decay)
    steps = _train_a_little(network, 2)
    next(steps)
    update_average(average, network)
    first = {name: t.clone() for name, t in network.state_dict().items()}
    next(steps)
    update_average(average, network)
    kept = first if decay == 1.0 else network.state_dict()  # 1 keeps the first copy, 0 follows the network
    assert all(
        torch.equal(t, kept[name])
        for name, t in average.module.state_dict().items()
        if not name.endswith("num_batches_tracked")
    )
