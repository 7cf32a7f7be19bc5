"""Train a small CNN on Fashion-MNIST with SAGE as a torchvision ``transforms.v2`` batch transform.

    python docs/examples/torchvision_sage.py --steps 300
    python docs/examples/torchvision_sage.py --steps 300 --cutmix   # RandomChoice([SAGE, CutMix])

The transform runs after the DataLoader with the model bound, so the saliency follows the model
(one extra forward/backward per step), exactly as SageMixup does inside timm's train.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).parent))
import fmnist  # noqa: E402

from timm_sage.transforms import SAGE  # noqa: E402


def to_tensors(images, labels):
    x = (torch.from_numpy(images).float().div(255)[:, None] - fmnist.MEAN) / fmnist.STD
    return x, torch.from_numpy(labels)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=20000, help="first N training images")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--cutmix", action="store_true", help="pick SAGE or CutMix at random per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train = TensorDataset(*to_tensors(*fmnist.load("train", args.train_limit)))
    test_x, test_y = to_tensors(*fmnist.load("test", args.test_limit))
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model = fmnist.small_cnn()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=1e-4
    )

    sage = SAGE(num_classes=10, upper_lambda=0.6, rand_pos=0.05, model=model, seed=args.seed)
    mix = v2.RandomChoice([sage, v2.CutMix(num_classes=10)]) if args.cutmix else sage

    fmnist.train_steps(model, optimizer, loader, args.steps, mix=mix)
    return fmnist.evaluate_accuracy(model, test_x, test_y)


if __name__ == "__main__":
    main()
