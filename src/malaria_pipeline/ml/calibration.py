"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0
that divides the logits before the softmax, fitted on held-out images by minimising their negative
log-likelihood. T leaves the predicted class (the argmax) as it is and only moves the confidence.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# T is kept within [1/100, 100]: on held-out images that the network separates perfectly the likelihood
# keeps rising as T falls to 0, and nothing below 1/100 changes a probability that matters.
LOG_T_BOUND = math.log(100.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the mean cross-entropy of ``softmax(logits / T)``.

    LBFGS on log T (so T stays positive without a constraint), in float64, from T = 1; T is clipped
    to [1/100, 100] (:data:`LOG_T_BOUND`).

    Args:
        logits: ``N×classes`` of held-out images (the validation subset, never the test subset).
        labels: ``int64, N`` class indices.

    Raises:
        ValueError: no logits to fit on.
    """
    if len(logits) == 0:
        raise ValueError("Temperature scaling needs held-out images: the validation subset is empty")
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(-LOG_T_BOUND, LOG_T_BOUND).exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().clamp(-LOG_T_BOUND, LOG_T_BOUND).exp())
    with torch.no_grad():
        before, after = F.cross_entropy(logits, labels), F.cross_entropy(logits / temperature, labels)
    logger.info(
        "Temperature scaling: T = %.4f; NLL of the %d held-out images %.4f → %.4f",
        temperature,
        len(labels),
        float(before),
        float(after),
    )
    return temperature
