"""Curves between two minima (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
DNNs"): the weights at t ∈ [0, 1] as a combination of control points P_0 = w_A, P_1..P_n (the bends, trained)
and P_{n+1} = w_B, with coefficients that depend on t only:

- `bezier`: the Bernstein polynomials of degree n + 1, φ(t) = Σ_k C(n+1, k) t^k (1 − t)^(n+1−k) P_k; one bend is
  Garipov's quadratic (1 − t)² w_A + 2t(1 − t) θ + t² w_B;
- `polychain`: the polygonal chain through the points, n + 1 segments of equal length in t.

The coefficients sum to 1 and give exactly w_A at t = 0 and w_B at t = 1, so a point of a curve is the affine
combination P_0 + Σ_{k≥1} c_k(t) (P_k − P_0): what the grid evaluator's `Affine` slice computes.
"""

from __future__ import annotations

from math import comb

import numpy as np

SHAPES = ("bezier", "polychain")


def coefficients(shape: str, bends: int, t: float) -> np.ndarray:
    """The weight of each control point (w_A, the bends, w_B) at `t`: float64 [bends + 2], summing to 1."""
    if shape not in SHAPES:
        raise ValueError(f"unknown curve shape {shape!r}")
    n = bends + 1  # the degree, or the number of segments
    out = np.zeros(n + 1, np.float64)
    if shape == "bezier":
        for k in range(n + 1):
            out[k] = comb(n, k) * t ** k * (1.0 - t) ** (n - k)
        return out
    segment = min(int(np.floor(t * n)), n - 1) if t > 0 else 0
    s = t * n - segment
    out[segment] = 1.0 - s
    out[segment + 1] = s
    return out


def initial_bends(bends: int) -> np.ndarray:
    """Where training starts the bends: on the straight line, θ_j = w_A + (j / (n + 1))·(w_B − w_A) (as fractions
    of the way from w_A to w_B: [bends])."""
    return np.arange(1, bends + 1, dtype=np.float64) / (bends + 1)
