"""The kernel: the loss (and accuracy) of a model at points of a slice of its parameter space.

`evaluate` holds the slices (`Affine` w + Σc·d, `Segment` (1−t)a + tb) and the `Evaluator` (the
in-place loop, or `batched` points per forward pass under vmap); `losses` scores outputs;
`hvp` gives Hessian-vector products; `device` chooses the device and tunes the allocator.
"""
