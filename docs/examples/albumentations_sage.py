"""SAGE in an albumentations pipeline fed by a saliency cache, on Fashion-MNIST.

    python docs/examples/albumentations_sage.py --steps 300

1. a "teacher" CNN is trained briefly without mixing (or pass --checkpoint of your own);
2. its saliency maps are cached for the training images (what `timm-sage saliency` does), stored at 14x14;
3. a fresh CNN trains on pairs mixed by ``SageMix``; partners and both maps come from the dataset wrapper
   ``SageMixDataset`` reading the cache in 2 DataLoader workers: no saliency pass per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import albumentations as A
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
import fmnist  # noqa: E402

from timm_sage.albumentations import SageMix, SageMixDataset  # noqa: E402
from timm_sage.data.cache import SaliencyCache, build_cache  # noqa: E402


def normalised(images) -> torch.Tensor:
    return (torch.from_numpy(images).float().div(255)[:, None] - fmnist.MEAN) / fmnist.STD


def train_teacher(images, labels, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = fmnist.small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(
        TensorDataset(normalised(images), torch.from_numpy(labels)), batch_size=64, shuffle=True
    )
    step = 0
    while step < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    return model


def to_tensor(image):
    """(28, 28) uint8 -> (1, 28, 28) float32, normalised."""
    return (torch.from_numpy(image).float().div(255)[None] - fmnist.MEAN) / fmnist.STD


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cache", default=None, help="saliency cache to use or create (default: a temp file)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images, labels = fmnist.load("train", args.train_limit)
    test_images, test_y = fmnist.load("test", args.test_limit)
    test_x = normalised(test_images)
    cache_path = Path(args.cache or Path(tempfile.mkdtemp()) / "fmnist_saliency.safetensors")
    if not cache_path.exists():
        teacher = train_teacher(images, labels, args.teacher_steps, args.seed)
        dataset = TensorDataset(normalised(images), torch.from_numpy(labels))
        build_cache(teacher, dataset, cache_path, batch_size=256, size=14)
    cache = SaliencyCache(cache_path)  # maps come back upsampled to 28 x 28

    # SageMix first: the cached maps describe the un-augmented images. Augment the mixed image after it.
    pipeline = A.Compose(
        [SageMix(num_classes=10, upper_lambda=0.6, rand_pos=0.05), A.HorizontalFlip(p=0.5)], seed=args.seed
    )
    paired = SageMixDataset(images, labels, cache, pipeline, to_tensor=to_tensor, seed=args.seed)
    loader = DataLoader(
        paired,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
    )

    torch.manual_seed(args.seed)
    model = fmnist.small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    fmnist.train_steps(model, optimizer, loader, args.steps)
    return fmnist.evaluate_accuracy(model, test_x, torch.from_numpy(test_y))


if __name__ == "__main__":
    main()
