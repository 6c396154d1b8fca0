#!/usr/bin/env bash
# Quick start on the built-in offline dataset (scikit-learn's 8x8 handwritten digits):
# train a ResNet, compute its loss landscape around three checkpoints, draw it, list the store.
# About three minutes on 2 CPU cores. Uses the `landscape` on PATH and ./runs unless LANDSCAPE_STORE
# is set. Rerunning it recomputes nothing.
set -euo pipefail

landscape train resnet digits --epochs 5 --name quickstart
landscape grid quickstart --epochs 0,1,5 --width "$WIDTH" --pairs 2 --batches 2 --name quickstart
landscape plot quickstart --epochs 0,1,5 --reduce mean    # the three epochs side by side
landscape plot quickstart --epoch 5                       # the reference figure: pair x batch panels
landscape ls
