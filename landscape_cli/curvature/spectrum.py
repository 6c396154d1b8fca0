"""The spectrum of a Hessian operator: extreme eigenpairs, trace and spectral density.

- Eigenpairs: scipy's ARPACK Lanczos (`eigsh`, implicitly restarted, with reorthogonalization) on
  the products, in float64, from a seeded start vector, for the K largest algebraic eigenvalues and
  separately the smallest; power iteration with deflation stalls on the clustered top eigenvalues
  of softmax networks. Each pair's residual ‖Hv − λv‖/|λ| is measured with one more product.
- Trace: Hutchinson's estimator, the mean of zᵀHz over seeded Rademacher probes, with its standard
  error.
- Density: stochastic Lanczos quadrature (Ghorbani et al. 2019, PyHessian): for each probe, the
  Ritz values of `steps` Lanczos steps (full reorthogonalization) weighted by the squared first
  components of their eigenvectors, smoothed with a Gaussian of width `sigma` on `bins` bins.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape_cli.kernel.hvp import HessianOperator


def _generator(seed: int, what: str) -> np.random.Generator:
    digest = hashlib.sha256(f"landscape-hessian:{seed}:{what}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class Eigenpairs:
    values: np.ndarray  # [k], descending
    vectors: np.ndarray  # [size, k], unit norm
    residuals: np.ndarray  # [k]: ‖Hv − λv‖ / |λ|


def extreme_eigenpairs(op: HessianOperator, k: int, which: str, seed: int, tol: float = 1e-4,
                       max_products: int = 3000, shift: float | None = None, v0: np.ndarray | None = None,
                       ncv: int | None = None) -> Eigenpairs:
    """The `k` largest ("LA") or smallest ("SA") algebraic eigenpairs, with measured residuals.

    The smallest are found as the largest-magnitude eigenvalues of H − shift·I with `shift` the
    largest eigenvalue (all of its eigenvalues are then <= 0, the smallest of H the largest in
    magnitude), as Li et al.'s code does: asking ARPACK for the smallest algebraic ones directly
    crawls when the spectrum clusters near zero. At most about `max_products` Hessian-vector
    products are spent; pairs that did not converge in that budget keep their (large) residuals.

    `v0`: the start vector (a warm start, e.g. the previous eigenvector while training; default: seeded
    Gaussian); `ncv`: the Lanczos basis size (default max(2k + 1, 20)).
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n = op.size
    if v0 is None or not np.any(v0):
        v0 = _generator(seed, f"start:{which}").standard_normal(n)
    if k >= n - 1 or n <= 16:  # ARPACK needs k < n - 1: small problems are solved densely
        dense = np.stack([op(e) for e in np.eye(n)], axis=1)
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
    else:
        ncv = min(n, ncv if ncv is not None else max(2 * k + 1, 20))
        offset = 0.0
        if which == "SA":
            offset = shift if shift is not None else float(extreme_eigenpairs(op, 1, "LA", seed, tol).values[0])

        def matvec(v: np.ndarray) -> np.ndarray:
            out = op(v)
            return out - offset * np.asarray(v).reshape(-1) if offset else out

        linear = LinearOperator((n, n), matvec=matvec, dtype=np.float64)  # type: ignore[call-arg]
        try:
            values, vectors = eigsh(linear, k=k, which="LA" if which == "LA" else "LM", v0=v0, tol=tol, ncv=ncv,
                                    maxiter=max(1, max_products // ncv))
        except ArpackNoConvergence as e:  # keep what converged; the residuals say which did not
            values, vectors = e.eigenvalues, e.eigenvectors
            if len(values) == 0:  # nothing converged: the best Ritz pair of a plain Lanczos run instead
                alphas, betas, basis = lanczos(op, v0, min(n, 2 * ncv), keep_basis=True)
                theta, y = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
                pick = np.argsort(theta)[::-1][:k] if which == "LA" else np.argsort(theta)[:k]
                values, vectors = theta[pick] - offset, basis.T @ y[:, pick]
        values = values + offset
    order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
    values, vectors = values[order][:k], vectors[:, order][:, :k]
    for j in range(vectors.shape[1]):  # a deterministic sign: the largest component positive
        if vectors[np.argmax(np.abs(vectors[:, j])), j] < 0:
            vectors[:, j] *= -1
    residuals = np.array([np.linalg.norm(op(vectors[:, j]) - values[j] * vectors[:, j]) / max(abs(values[j]), 1e-30)
                          for j in range(vectors.shape[1])])
    return Eigenpairs(values, vectors, residuals)


@dataclass
class Trace:
    value: float
    stderr: float
    probes: int


def hutchinson_trace(op: HessianOperator, probes: int, seed: int) -> Trace:
    """tr(H) ≈ mean of zᵀHz over Rademacher probes z, with the standard error of that mean."""
    rng = _generator(seed, "trace")
    samples = []
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=op.size)
        samples.append(float(z @ op(z)))
    values = np.asarray(samples)
    stderr = float(values.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan")
    return Trace(float(values.mean()), stderr, probes)


@dataclass
class Density:
    centres: np.ndarray  # [bins] eigenvalue at each bin's centre
    density: np.ndarray  # [bins] probability density (integrates to ~1 over the bins)
    probes: int
    steps: int
    sigma: float
    nodes: np.ndarray  # [probes, steps] the Gauss quadrature nodes of each probe (Ritz values; NaN where a
    weights: np.ndarray  # probe's Lanczos stopped early) and their weights (squared first components, sum 1)


def top_eigenpair(op: HessianOperator, v0: np.ndarray | None, tol: float, max_steps: int,
                  seed: int = 0) -> tuple[float, float, np.ndarray]:
    """The largest algebraic eigenpair by Lanczos from `v0` (a warm start: the previous eigenvector while training;
    None: seeded Gaussian), with full reorthogonalization, stopped as soon as the top Ritz pair's residual
    ‖Hv − θv‖ / |θ| is at most `tol` (or after `max_steps` products). Returns (θ, residual, v).

    One product per step and none after: the residual is Lanczos's own, |β_m·s_m| / |θ| (s_m the Ritz vector's
    last component), which full reorthogonalization keeps equal to the measured one. From a good warm start a few
    products suffice where ARPACK spends its whole basis (ncv products) and one more to measure the residual, so
    tracking λmax during training costs a few training steps per estimate. The eigenvalue's own error is of the
    order of residual² · |θ| / gap, far below `tol`."""
    n = op.size
    if v0 is None or not np.any(v0) or not np.isfinite(v0).all():
        v0 = _generator(seed, "start:LA").standard_normal(n)
    steps = min(max_steps, n)
    # the Lanczos vectors as rows of a float64 matrix on the operator's device (grown by doubling): the products
    # never leave the device, and full reorthogonalization by classical Gram-Schmidt is two matrix-vector
    # products over the basis (where one dot and one axpy per vector and step cost nearly what the products did
    # on millions of parameters); a second round only where the first cancelled much (Kahan)
    basis = torch.empty((min(steps, 4), n), dtype=torch.float64, device=op.device)
    start = torch.from_numpy(np.asarray(v0, np.float64).reshape(-1)).to(op.device)
    basis[0] = start / torch.linalg.vector_norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual, y = float("nan"), float("inf"), np.ones(1)
    for i in range(steps):
        w = op.product(basis[i])
        alphas.append(float(w @ basis[i]))
        q = basis[:i + 1]
        before = float(torch.linalg.vector_norm(w))
        for _ in range(2):
            w.addmv_(q.T, q @ w, alpha=-1.0)
            beta = float(torch.linalg.vector_norm(w))
            if beta >= 0.7 * before:
                break
            before = beta
        values, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        theta, y = float(values[-1]), vectors[:, -1]
        residual = abs(beta * y[-1]) / max(abs(theta), 1e-30)
        if residual <= tol or beta < 1e-10 * max(abs(theta), 1e-30) or not np.isfinite(theta) or i + 1 == steps:
            break
        betas.append(beta)
        if i + 1 == len(basis):
            grown = torch.empty((min(2 * len(basis), steps), n), dtype=torch.float64, device=op.device)
            grown[:len(basis)] = basis
            basis = grown
        torch.div(w, beta, out=basis[i + 1])
    vector: np.ndarray = (torch.from_numpy(y).to(op.device) @ basis[:len(alphas)]).cpu().numpy()
    if vector[np.argmax(np.abs(vector))] < 0:  # a deterministic sign, as extreme_eigenpairs gives
        vector = -vector
    return theta, float(residual), vector


def lanczos(op: HessianOperator, v: np.ndarray, steps: int, keep_basis: bool = False) -> Any:
    """`steps` Lanczos steps from v with full reorthogonalization: the tridiagonal's (alpha, beta)
    (and, with `keep_basis`, the orthonormal basis [steps, size])."""
    basis = [v / np.linalg.norm(v)]
    alphas, betas = [], []
    for i in range(min(steps, op.size)):
        w = op(basis[i])
        alpha = float(w @ basis[i])
        for b in basis:  # full reorthogonalization (twice is enough)
            w -= (w @ b) * b
        for b in basis:
            w -= (w @ b) * b
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        if i == steps - 1 or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(w / beta)
    if keep_basis:
        return np.array(alphas), np.array(betas), np.stack(basis[:len(alphas)])
    return np.array(alphas), np.array(betas)


def spectral_density(op: HessianOperator, probes: int, steps: int, bins: int, seed: int,
                     bounds: tuple[float, float] | None = None, sigma_fraction: float = 0.01) -> Density:
    """Stochastic Lanczos quadrature: a Gaussian-smoothed estimate of the eigenvalue density."""
    rng = _generator(seed, "density")
    nodes, weights = [], []
    for _ in range(probes):
        alphas, betas = lanczos(op, rng.choice([-1.0, 1.0], size=op.size), steps)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, vectors = np.linalg.eigh(t)
        nodes.append(theta)
        weights.append(vectors[0] ** 2)
    allnodes = np.concatenate(nodes)
    lo, hi = bounds if bounds is not None else (float(allnodes.min()), float(allnodes.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    sigma = sigma_fraction * (hi - lo)
    centres = np.linspace(lo, hi, bins)
    density = np.zeros(bins)
    for theta, w in zip(nodes, weights, strict=True):
        density += (w[None, :] * np.exp(-((centres[:, None] - theta[None, :]) ** 2) / (2 * sigma ** 2))).sum(axis=1)
    density /= probes * sigma * np.sqrt(2 * np.pi)
    raw_nodes, raw_weights = np.full((probes, steps), np.nan), np.full((probes, steps), np.nan)
    for i, (theta, w) in enumerate(zip(nodes, weights, strict=True)):
        raw_nodes[i, :len(theta)], raw_weights[i, :len(w)] = theta, w
    return Density(centres, density, probes, steps, sigma, raw_nodes, raw_weights)
