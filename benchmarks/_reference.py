"""The original research code's grid loop, as `grid_speed.py`'s `reference` configuration measures it.

Per grid point (Li et al.'s `net_plotter.set_weights` + `evaluation.eval_loss`, as the experiment ran
them): every perturbed parameter is reassigned with ``p.data = w + a*d1 + b*d2`` (d1, d2 random,
filter-normalized; biases and BatchNorm parameters are not perturbed), a FRESH
``DataLoader(dataset, batch_size=256, shuffle=False, num_workers=4)`` iterator is opened and read for its
first `batches` batches, each item decoded on the fly (uint8 array -> ``PIL.Image.fromarray`` ->
``ToTensor()`` -> ``Normalize(mean, std)``), the model runs in train mode (BatchNorm batch statistics,
its running statistics updated as a side effect, as in the original) under ``torch.no_grad()``, and the
loss is read with one ``.item()`` per batch (the correct-prediction count is summed on the device and
read once per point). On cuda the batches are moved to the device inside the loop, per point.
The benchmark's dataset holds exactly the batches read (3 x 256 images), so the 4 workers never decode
more than those; over a full training set they would prefetch up to 8 batches per fresh iterator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

NUM_WORKERS = 4


class ImageDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """uint8 images decoded per item with PIL and a torchvision `Compose`, as a torchvision dataset does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> None:
        import torchvision.transforms as T

        # [N, H, W] for one channel (PIL mode "L"), [N, H, W, C] otherwise
        self.images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1).copy()
        self.labels = labels
        self.transform = T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def random_directions(model: nn.Module, seed: int = 0) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """Two Gaussian directions, each filter rescaled to the norm of the weights' filter; None for 1-D
    parameters (biases, BatchNorm: not perturbed)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[Tensor | None]] = [[], []]
    for p in model.parameters():
        for dirs in out:
            if p.dim() <= 1:
                dirs.append(None)
                continue
            w = p.detach().cpu()
            d = torch.randn(w.shape, generator=g)
            scale = w.reshape(len(w), -1).norm(dim=1) / (d.reshape(len(d), -1).norm(dim=1) + 1e-10)
            dirs.append((d * scale.view(-1, *[1] * (d.dim() - 1))).to(p.device))
    return out[0], out[1]


def measure(model: nn.Module, dataset: ImageDataset, device: torch.device, batches: int, batch_size: int,
            points: int) -> dict[str, float]:
    """ms per grid point of the reference loop, averaged over `points` points after one warm-up point."""
    model = model.to(device)
    model.train()
    params = list(model.parameters())
    weights = [p.detach().clone() for p in params]
    d1, d2 = random_directions(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=NUM_WORKERS)
    coords = np.linspace(-1.0, 1.0, points + 1)
    values = []
    t0 = 0.0
    for i, a in enumerate(coords):
        if i == 1:  # after the warm-up point
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = -a / 2
        for p, w, x1, x2 in zip(params, weights, d1, d2, strict=True):
            if x1 is not None and x2 is not None:
                p.data = w + a * x1 + b * x2
        total_loss, correct, seen = 0.0, torch.zeros((), dtype=torch.long, device=device), 0
        with torch.no_grad():
            for j, (x, y) in enumerate(loader):  # a fresh iterator: NUM_WORKERS new worker processes
                if j == batches:
                    break
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss = nn.functional.cross_entropy(out, y)
                total_loss += loss.item() * len(y)
                correct += out.argmax(1).eq(y).sum()
                seen += len(y)
        values.append((total_loss / seen, correct.item() / seen))
    per_point = (time.perf_counter() - t0) / points
    return {"per_point_ms": per_point * 1000, "points": points, "loss_first": values[0][0]}
