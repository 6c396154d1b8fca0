"""`landscape_cli.evaluate`, as earlier releases and README's notebook recipe import it: the kernel's evaluator."""

from landscape_cli.kernel.evaluate import Affine, Evaluator, Segment, Slice, evaluate_plane

__all__ = ["Affine", "Evaluator", "Segment", "Slice", "evaluate_plane"]
