#!/usr/bin/env bash
# Beyond one random plane, on the built-in offline digits: 1-D random lines, the interpolation
# between checkpoints (Goodfellow et al.) and the PCA plane of the training trajectory (Li et al.),
# each drawn to a PNG. Under a minute on 2 CPU cores. Uses the `landscape` on PATH and ./runs
# unless LANDSCAPE_STORE is set; trains a small CNN for 8 epochs (the run `analyses`) first. Rerunning
# it recomputes nothing. Pass a directory to also copy the three figures there (README's are made so).
set -euo pipefail
out="${1:-}"

landscape train cnn digits --epochs 8 --batch-size 32 --name analyses
# lines along the first direction of two random pairs, around epochs 0, 1 and 8
landscape grid analyses --dims 1 --epochs 0,1,8 --width 41 --pairs 2 --batches 2 --name lines
# the straight path from the untrained weights (and from epoch 1) to the trained ones
landscape grid analyses --directions interpolate --epochs 0,1 --to-epoch 8 --width 41 --batches 2 --name interpolation
# the plane of the trajectory's two principal components, centred at epoch 8, with the path
landscape grid analyses --directions pca --width 21 --batches 2 --name pca
for grid in lines interpolation; do   # curves: one per epoch, mean over pairs and batches with a min-max band
  png=$(landscape plot analyses --grid "$grid")
  echo "$grid: $png"
  if [[ -n "$out" ]]; then cp "$png" "$out/$grid.png"; fi
done
# contours with the path overlaid; log-spaced levels show the valley the path runs down
png=$(landscape plot analyses --grid pca --reduce mean --log)
echo "pca: $png"
if [[ -n "$out" ]]; then cp "$png" "$out/pca.png"; fi
landscape ls
