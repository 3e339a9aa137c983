"""An exponential moving average (EMA) of a network's weights and batch-norm statistics.

torch's ``AveragedModel`` holds the average (a copy of the network, and ``n_averaged``) and
``get_ema_multi_avg_fn`` computes each update. :func:`update_average` does what
``AveragedModel.update_parameters`` does (written against torch 2.11 to 2.14), without its host reads:
there ``bool(n_averaged == 0)`` waits for the device when ``n_averaged`` lives on it, and
``n_averaged.to(device)`` (a blocking copy) when it does not. Here ``n_averaged`` stays on the CPU,
where reading it costs no wait, and the update only queues work on the device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_average(model: nn.Module, decay: float) -> AveragedModel:
    """The EMA of ``model``'s parameters and buffers, ``decay`` the weight of the old average at each update.

    The average copies ``model`` at its first update, then follows it with a horizon of about
    ``1 / (1 - decay)`` updates. Never move it with ``.to()``: its counter ``n_averaged`` must stay on
    the CPU (:func:`update_average`).
    """
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def update_average(average: AveragedModel, model: nn.Module) -> None:
    """One update of ``average`` towards ``model`` (the network it was made from), as
    ``average.update_parameters(model)`` does: a copy the first time, then ``average.multi_avg_fn`` on
    the parameters and buffers, one call per dtype."""
    pairs = zip(
        [*average.module.parameters(), *average.module.buffers()],
        [*model.parameters(), *model.buffers()],
        strict=True,
    )
    if int(average.n_averaged) == 0:  # on the CPU: no wait for the device
        for mine, theirs in pairs:
            mine.copy_(theirs)
    else:
        by_dtype: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for mine, theirs in pairs:
            group = by_dtype.setdefault(mine.dtype, ([], []))
            group[0].append(mine.detach())
            group[1].append(theirs.detach())
        for mine, theirs in by_dtype.values():
            average.multi_avg_fn(mine, theirs, average.n_averaged)
    average.n_averaged += 1
