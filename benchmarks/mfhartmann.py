"""MF-Hartmann 3-d and 6-d, the multi-fidelity Hartmann functions of mf-prior-bench.

Written from the published definition (mf-prior-bench's ``mfpbench.synthetic.hartmann``, after
Kandasamy et al.'s multi-fidelity Hartmann): at fidelity ``z`` in 1..100, with ``s`` the
log-scaled fidelity ``log(z) / log(100)``, the function is the Hartmann function whose weights
``alpha`` are lowered by ``bias * (1 - s)`` (a flatter function at low fidelity), plus
``|N(0, 1)| * noise * (1 - s)`` of noise seeded by the point and the fidelity. At z = 100 it is
the noiseless Hartmann function (minimum -3.86278 in 3-d, -3.32237 in 6-d). The "good"
fidelity-correlation preset (bias 2.5, noise 2.0) is used. A fidelity costs
``0.05 + 0.95 * (z / 100) ** 2``.

``benchmarks/data/mfhartmann_reference.json`` holds values computed by mf-prior-bench 1.10.0
itself (in a separate environment: it pins numpy < 2); ``tests/test_replay.py`` checks this
implementation against them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
A3 = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
P3 = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]], dtype=float)
A6 = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
P6 = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ],
    dtype=float,
)
OPTIMA = {3: (0.114614, 0.555649, 0.852547), 6: (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)}
GOOD = (2.5, 2.0)  # bias, noise: mf-prior-bench's "good" preset
NOISE_SEED = 1337


class MFHartmann:
    """``f(z, x)``: the ``dims``-dimensional MF-Hartmann function, minimised."""

    z_min, z_max = 1, 100

    def __init__(self, dims: int, bias: float = GOOD[0], noise: float = GOOD[1]) -> None:
        if dims not in OPTIMA:
            raise ValueError(f"dims must be 3 or 6, not {dims}")
        self.dims = dims
        self.bias, self.noise = bias, noise
        self.a, self.p = (A3, P3) if dims == 3 else (A6, P6)
        self.optimum = OPTIMA[dims]

    def scaled(self, z: int) -> float:
        return float((np.log(z) - np.log(self.z_min)) / (np.log(self.z_max) - np.log(self.z_min)))

    def __call__(self, z: int, x: tuple[float, ...]) -> float:
        s = self.scaled(z)
        inner = np.sum(self.a * (np.asarray(x, dtype=float)[np.newaxis, :] - self.p) ** 2, axis=-1)
        value = -float(np.sum((ALPHA - self.bias * (1 - s)) * np.exp(-inner)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rng = np.random.default_rng(abs(NOISE_SEED * z * hash(tuple(x))))
        return value + float(abs(rng.normal())) * self.noise * (1 - s)

    def true(self, xs: np.ndarray) -> np.ndarray:
        """The noiseless full-fidelity values of many points ``(n, dims)``, vectorised."""
        inner = np.sum(self.a[np.newaxis] * (xs[:, np.newaxis, :] - self.p[np.newaxis]) ** 2, axis=-1)
        return -np.sum(ALPHA * np.exp(-inner), axis=-1)

    @staticmethod
    def cost(z: int) -> float:
        return 0.05 + (1 - 0.05) * (z / 100) ** 2

    def random_finals(self, n: int, seed: int) -> np.ndarray:
        return self.true(np.random.default_rng(seed).random((n, self.dims)))

    def good_prior(self, seed: int, spread: float = 0.05) -> tuple[float, ...]:
        """The optimum moved by N(0, spread) per coordinate (clipped to [0, 1])."""
        rng = np.random.default_rng(seed)
        return tuple(float(v) for v in np.clip(np.asarray(self.optimum) + rng.normal(0, spread, self.dims), 0, 1))

    def bad_prior(self, seed: int, n: int = 10_000) -> tuple[float, ...]:
        """The worst of ``n`` uniform random points at full fidelity."""
        xs = np.random.default_rng(seed + 1).random((n, self.dims))
        return tuple(float(v) for v in xs[int(np.argmax(self.true(xs)))])


def hartmann_space(dims: int) -> Any:
    """The search space: ``x0..x{dims-1}`` uniform in [0, 1]."""
    from optuna.distributions import FloatDistribution

    from signtune.space import Param, SearchSpace

    return SearchSpace(Path(f"mfh{dims}"), tuple(Param(f"x{i}", FloatDistribution(0.0, 1.0)) for i in range(dims)))
