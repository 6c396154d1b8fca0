#!/usr/bin/env bash
# The reference experiment of the research code this tool grew from, as commands of this tool:
# ResNet and VGG11 (and the ResNet without skip connections), trained with Adam (lr 1e-3, batch 256)
# on CIFAR-10 and Fashion-MNIST with ReLU, sigmoid and tanh; landscapes at epochs 0, 1 and 9 on a
# 41x41 grid spanning ±1 along filter-normalized directions (BatchNorm left unperturbed), three
# direction pairs x the training set's first three mini-batches of 256 images, BatchNorm in
# training mode; the 100x zoom; one layer and one kernel perturbed with the directions of the full
# grid; and the comparison figures.
#
# Needs the datasets (downloaded once into --data-dir / $LANDSCAPE_DATA) and a GPU, or days of CPU:
# one 41x41x3x3 grid of a ResNet on Fashion-MNIST is ~15 k forward passes of 256 images per epoch.
# Every command is idempotent: rerun the script after an interruption and it continues (grids with
# --resume pick up their finished rows).
set -euo pipefail

EPOCHS=0,1,9
GRID=(--epochs "$EPOCHS" --width 41 --pairs 3 --batches 3 --batch-size 256 --bn train --resume)

for dataset in cifar-10 fashion-mnist; do
  for model in resnet vgg plain; do
    for act in relu sigmoid tanh; do
      run="$model-$dataset-$act"
      landscape train "$model" "$dataset" --activation "$act" --epochs 9 --optimizer adam --lr 1e-3 \
        --batch-size 256 --name "$run"
      landscape grid "$run" "${GRID[@]}" --span 1 --name main             # the reference grid
      landscape grid "$run" "${GRID[@]}" --span 0.01 --name zoom          # 100x zoom, same directions
      first_conv=$(landscape layers "$run" --json | python3 -c 'import json,sys; print(next(l["name"] for l in json.load(sys.stdin) if l["kind"] == "conv"))')
      landscape grid "$run" "${GRID[@]}" --layer "$first_conv" --directions-from main --name layer
      landscape grid "$run" "${GRID[@]}" --layer "$first_conv" --single-kernel --directions-from main --name kernel
      for epoch in 0 1 9; do
        landscape plot "$run" --grid main --epoch "$epoch"                 # pair x batch heatmaps + arrows
        landscape plot "$run" --grid main --epoch "$epoch" --contour --clip 10
        landscape plot "$run" --grid zoom --epoch "$epoch"
      done
      landscape plot "$run" --grid main --epochs "$EPOCHS" --reduce mean   # epochs side by side
      landscape plot "$run" --grid layer --epochs "$EPOCHS" --reduce mean
      landscape plot "$run" --grid kernel --epochs "$EPOCHS" --reduce mean
    done
    # activations side by side
    landscape plot "$model-$dataset-relu" "$model-$dataset-sigmoid" "$model-$dataset-tanh" --grid main \
      --epochs "$EPOCHS" --reduce mean --out "compare-$model-$dataset-activations.png"
  done
  # architectures side by side (skip connections: resnet vs plain)
  landscape plot "resnet-$dataset-relu" "vgg-$dataset-relu" "plain-$dataset-relu" --grid main \
    --epochs "$EPOCHS" --reduce mean --out "compare-$dataset-architectures.png"
done
landscape ls
