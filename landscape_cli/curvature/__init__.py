"""Curvature: `hessian` (a run's Hessian eigenpairs, λmin, trace and density, kept per epoch in the store;
its core is what the grid engine calls for Hessian-direction grids) and `stats` (sharpness and flatness
read from a stored grid, without torch)."""
