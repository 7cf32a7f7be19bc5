"""CIFAR-10/100 from their python-pickle folders (the format torchvision reads; nothing is downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def read_cifar(
    name: str, data_dir: str | Path, *, train: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of CIFAR: ``(images (N, 3, 32, 32) uint8, labels (N,) int64, class names)``.

    ``data_dir`` is the folder holding ``cifar-10-batches-py/`` (``cifar-100-python/``) or that folder
    itself. FileNotFoundError (naming the folder and the archive to fetch) when it is missing.
    """
    if name not in FOLDERS:
        raise ValueError(f"name must be one of {', '.join(FOLDERS)}, got {name!r}")
    folder = FOLDERS[name]
    url = f"https://www.cs.toronto.edu/~kriz/{'cifar-10' if name == 'cifar10' else 'cifar-100'}-python.tar.gz"
    root = Path(data_dir)
    root = root if root.name == folder else root / folder
    hundred = name == "cifar100"
    files = (
        ([root / "train"] if hundred else sorted(root.glob("data_batch_*")))
        if train
        else [root / ("test" if hundred else "test_batch")]
    )
    meta = root / ("meta" if hundred else "batches.meta")
    if not files or not all(f.is_file() for f in [*files, meta]):
        raise FileNotFoundError(
            f"{name}: looked for {root} (python-pickle batches) and found none or an incomplete copy; "
            f"download {url} and extract it into {root.parent} (timm-sage never downloads)"
        )
    images, labels = [], []
    for file in files:
        # The CIFAR "python version" is a pickle by design (as torchvision reads it): open folders you trust.
        with file.open("rb") as handle:
            raw = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(raw[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(raw[b"fine_labels" if hundred else b"labels"])
    with meta.open("rb") as handle:
        names = pickle.load(handle, encoding="bytes")[b"fine_label_names" if hundred else b"label_names"]
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return torch.from_numpy(np.concatenate(images)), torch.as_tensor(labels, dtype=torch.int64), classes
