#!/usr/bin/env bash
# Quick start on the built-in offline dataset (scikit-learn's 8x8 digits): train, then list.
# Uses the `landscape` on PATH (README's first command puts .venv/bin first) and ./runs unless
# LANDSCAPE_STORE is set.
set -euo pipefail

landscape train resnet digits --epochs 5 --name quickstart
landscape ls
