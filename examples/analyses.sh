#!/usr/bin/env bash
# Beyond one random plane, on the built-in offline digits: 1-D random lines, the interpolation
# between checkpoints (Goodfellow et al.) and the PCA plane of the training trajectory (Li et al.),
# each drawn to a PNG. About four minutes on 2 CPU cores. Uses the `landscape` on PATH and ./runs
# unless LANDSCAPE_STORE is set; trains the quick start's run if it is not there. Rerunning it
# recomputes nothing. Pass a directory to also copy the three figures there (README's are made so).
set -euo pipefail
out="${1:-}"

landscape train resnet digits --epochs 5 --name quickstart
# lines along the first direction of two random pairs, around epochs 0, 1 and 5
landscape grid quickstart --dims 1 --epochs 0,1,5 --width 41 --pairs 2 --batches 2 --name lines
# the straight path from the untrained weights (and from epoch 1) to the trained ones
landscape grid quickstart --directions interpolate --epochs 0,1 --to-epoch 5 --width 41 --batches 2 --name interpolation
# the plane of the trajectory's two principal components, centred at epoch 5, with the path
landscape grid quickstart --directions pca --width 21 --batches 2 --name pca
for grid in lines interpolation; do   # curves: one per epoch, mean over pairs and batches with a min-max band
  png=$(landscape plot quickstart --grid "$grid")
  echo "$grid: $png"
  if [[ -n "$out" ]]; then cp "$png" "$out/$grid.png"; fi
done
# contours with the path overlaid; log-spaced levels show the valley the path runs down
png=$(landscape plot quickstart --grid pca --reduce mean --log)
echo "pca: $png"
if [[ -n "$out" ]]; then cp "$png" "$out/pca.png"; fi
landscape ls
