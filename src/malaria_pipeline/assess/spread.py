"""How the classifier's error rates vary between patients: the healthy range. No Kedro, no MLflow, no torch.

The share of a healthy patient's cells that the classifier calls Parasitized is not one binomial rate:
some patients' smears (stain, debris, platelets over red cells) fool it far more than others. On the
shared archive, out of fold, that share ran from 0 to 9% between patients while its pooled value was
2.9%. A call that takes the pooled specificity as every patient's sees the worse patients' false alarms
as parasites. So each rate (the false-alarm rate over every patient's uninfected-labelled cells, the
detection rate over every infected patient's parasitized-labelled cells) is fitted as a beta-binomial,
the standard model for counts whose rate varies between clusters (Williams 1975; Skellam 1948): each
patient has its own rate, drawn from a Beta distribution of mean ``mean`` and intra-patient correlation
``rho`` (the share of the count's variance that lies between patients). The likelihood is SciPy's
(``scipy.stats.betabinom``); this module only maximises it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit
from scipy.stats import betabinom, binom


@dataclass(frozen=True, kw_only=True)
class RateSpread:
    """A rate that varies between patients: each patient's rate ~ Beta with this mean and ``rho``.

    Attributes:
        mean: the mean rate over patients.
        rho: the intra-patient correlation ``1 / (a + b + 1)``: 0 is one rate for everyone (a binomial);
            the between-patient variance of the rate is ``mean (1 − mean) rho``.
        patients, cells, events: what it was fitted on (patients with cells of that class, their cells,
            and the cells called Parasitized among them).
    """

    mean: float
    rho: float
    patients: int
    cells: int
    events: int

    @property
    def a(self) -> float:
        return self.mean * (1 / self.rho - 1)

    @property
    def b(self) -> float:
        return (1 - self.mean) * (1 / self.rho - 1)

    @property
    def between_variance(self) -> float:
        """The variance of a patient's rate around ``mean``."""
        return self.mean * (1 - self.mean) * self.rho

    def chance_of_at_least(self, events: np.ndarray | int, cells: np.ndarray | int) -> np.ndarray:
        """P(K >= events) for a patient of ``cells`` cells whose rate is drawn from this spread (a binomial
        where ``rho`` is 0)."""
        if self.rho == 0:
            return binom.sf(np.asarray(events) - 1, cells, self.mean)
        return betabinom.sf(np.asarray(events) - 1, cells, self.a, self.b)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RateSpread:
        return cls(**saved)


# A fitted rho is kept in [RHO_FLOOR, 0.5]: at 0 the Beta's a and b are infinite (a binomial).
RHO_FLOOR = 1e-7


def fit_rate_spread(events: np.ndarray, cells: np.ndarray) -> RateSpread:
    """The beta-binomial of largest likelihood for ``events`` of ``cells`` per patient (SciPy's ``betabinom``).

    A mean fitted as 0 (no event in any patient) is kept at half an event over all the cells, and one
    fitted as 1 likewise below 1: a rate never seen is not shown to be 0 by a finite set of cells.

    Raises:
        ValueError: no patient with cells, or counts out of range.
    """
    k, n = np.asarray(events, dtype=float), np.asarray(cells, dtype=float)
    keep = n > 0
    k, n = k[keep], n[keep]
    if not len(n):
        raise ValueError("No patient has cells of this class: the spread of a rate needs at least one")
    if (k < 0).any() or (k > n).any():
        raise ValueError("Counts out of range: every patient needs 0 <= events <= cells")
    total = n.sum()
    bounds = [(float(logit(0.5 / total)), float(logit(1 - 0.5 / total))), (logit(RHO_FLOOR), logit(0.5))]

    def nll(theta: np.ndarray) -> float:
        mean, rho = expit(theta)
        scale = 1 / rho - 1
        return -float(betabinom.logpmf(k, n, mean * scale, (1 - mean) * scale).sum())

    pooled = float(np.clip(k.sum() / total, 0.5 / total, 1 - 0.5 / total))
    # From the pooled rate, and from a small and a large spread: the best of three local optima.
    fits = [
        minimize(nll, np.array([logit(pooled), logit(rho)]), method="L-BFGS-B", bounds=bounds)
        for rho in (1e-4, 1e-2, 0.2)
    ]
    best = min(fits, key=lambda fit: fit.fun)
    mean, rho = (float(v) for v in expit(best.x))
    return RateSpread(mean=mean, rho=rho, patients=int(len(n)), cells=int(total), events=int(k.sum()))


HEALTHY_FROM = ("all", "controls")


@dataclass(frozen=True, kw_only=True)
class PatientSpread:
    """The two rates that a patient table needs, each with its spread between patients, at one threshold.

    Attributes:
        threshold: the counting threshold (P(Parasitized) at or above it is counted Parasitized).
        false_alarm: over every patient's uninfected-labelled cells (the healthy range).
        detection: over every patient's parasitized-labelled cells.
        source: where the cells come from.
    """

    threshold: float
    false_alarm: RateSpread
    detection: RateSpread
    source: str

    @classmethod
    def of(
        cls,
        patients: np.ndarray,
        is_positive: np.ndarray,
        is_called: np.ndarray,
        threshold: float,
        source: str,
        healthy_from: str = "all",
    ) -> PatientSpread:
        """Fitted on labelled cells: each patient's uninfected cells and parasitized cells, and how many of
        each were called Parasitized. ``healthy_from``: whose uninfected cells give the false alarms, ``all``
        patients' or the ``controls``' (patients none of whose cells is labelled parasitized; all where there
        is none)."""
        if healthy_from not in HEALTHY_FROM:
            raise ValueError(
                f"patients.healthy_range is {healthy_from!r}: give all (every patient's uninfected cells) or "
                "controls (the uninfected patients' only)"
            )
        cells = pd.DataFrame(
            {
                "patient": np.asarray(patients).astype(str),
                "positive": np.asarray(is_positive, dtype=bool),
                "called": np.asarray(is_called, dtype=bool),
            }
        )
        counts = cells.groupby(["positive", "patient"])["called"].agg(["sum", "size"])
        if set(counts.index.get_level_values("positive")) != {False, True}:
            raise ValueError(f"The reference cells of {source} are all of one class: no spread of both rates")
        negative, positive = counts.loc[False], counts.loc[True]
        controls = negative.index.difference(positive.index)
        if healthy_from == "controls" and len(controls):
            negative = negative.loc[controls]
        return cls(
            threshold=float(threshold),
            false_alarm=fit_rate_spread(negative["sum"].to_numpy(), negative["size"].to_numpy()),
            detection=fit_rate_spread(positive["sum"].to_numpy(), positive["size"].to_numpy()),
            source=source,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "false_alarm": self.false_alarm.as_dict(),
            "detection": self.detection.as_dict(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> PatientSpread:
        return cls(
            threshold=float(saved["threshold"]),
            false_alarm=RateSpread.from_dict(saved["false_alarm"]),
            detection=RateSpread.from_dict(saved["detection"]),
            source=saved["source"],
        )
