"""Saliency cache: smoothed saliency maps of a whole dataset, computed once with a trained model.

``timm-sage saliency --model NAME --checkpoint PATH --data DIR -o maps.safetensors`` writes one safetensors
file holding ``maps`` (N, h, w) float16 (each map divided by its maximum, so values lie in [0, 1]),
``scales`` (N,) float32 (those maxima, for the per-sample loss: independent of the batch size), and
``indices`` (N,) int64 (the dataset's sample indices, ascending). :class:`SaliencyCache` reads single
maps from it with positioned reads, so DataLoader workers never load, nor map, the whole file. This is
the cheap mode of SAGE: no extra pass per step, at the price of saliency that does not follow the model
as it trains.

Building is resumable: finished parts are written atomically to ``OUTPUT.partial/`` and a rerun with the
same settings continues from them; the final file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from timm_sage import functional
from timm_sage._atomic import atomic_open, atomic_write_text
from timm_sage.config import SAGE_DEFAULTS as _D
from timm_sage.config import SageConfig, add_option_arguments
from timm_sage.core import checks as _checks

__all__ = ["SaliencyCache", "build_cache", "add_arguments", "run"]

FORMAT_VERSION = "1"
_DTYPES = {"F16": (np.float16, 2), "F32": (np.float32, 4), "I64": (np.int64, 8)}


# -- file format ---------------------------------------------------------------------------------
def _read_header(handle: Any) -> tuple[dict[str, Any], int]:
    (length,) = struct.unpack("<Q", handle.read(8))
    if length <= 0 or length > 100_000_000:
        raise ValueError("not a safetensors file (bad header length)")
    header = json.loads(handle.read(length))
    return header, 8 + length


def _write_safetensors(
    path: Path, arrays: dict[str, tuple[str, tuple[int, ...]]], chunks, metadata: dict[str, str]
):
    """Stream a safetensors file: ``arrays`` name -> (dtype code, shape) in file order, ``chunks`` an
    iterable of (name, contiguous ndarray) in the same order whose bytes fill each array in turn."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, (code, shape) in arrays.items():
        size = int(np.prod(shape, dtype=np.int64)) * _DTYPES[code][1]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    written = 0
    with atomic_open(path) as handle:  # a short write raises inside: the temporary file is removed
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, array in chunks:
            code = header[name]["dtype"]
            handle.write(np.ascontiguousarray(array, dtype=_DTYPES[code][0]).tobytes())
            written += array.size * _DTYPES[code][1]
        if written != offset:
            raise RuntimeError(f"saliency cache writer got {written} bytes for {offset} expected")


class SaliencyCache:
    """Lazy reader of a saliency cache file; safe to use from DataLoader workers.

    Args:
        path: a file written by :func:`build_cache` / ``timm-sage saliency``.
        image_size: ``(H, W)`` (or an int for square) that maps are resized to on read (bilinear);
            default: the size of the images the maps were computed on. ``None`` keeps stored size.

    Each ``cache[i]`` (``i`` a dataset index) costs one positioned read of ``h * w * 2`` bytes: memory
    stays bounded whatever the dataset's size. The file handle is reopened in each process.
    """

    def __init__(
        self, path: str | os.PathLike, image_size: int | tuple[int, int] | None | str = "original"
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"saliency cache {self.path} does not exist")
        with open(self.path, "rb") as handle:
            header, self._data_start = _read_header(handle)
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        for name, code in (("maps", "F16"), ("scales", "F32"), ("indices", "I64")):
            if header.get(name, {}).get("dtype") != code:
                raise ValueError(f"{self.path} is not a saliency cache: needs '{name}' of dtype {code}")
        self._entries = header
        count, height, width = header["maps"]["shape"]
        self.map_size = (int(height), int(width))
        self._map_bytes = height * width * 2
        self._fd: int | None = None
        self._pid = -1
        self.indices = self._read_array("indices")
        self.scales = self._read_array("scales")
        if self.indices.shape != (count,) or self.scales.shape != (count,):
            raise ValueError(f"{self.path}: indices/scales do not match {count} maps")
        if count > 1 and not bool(np.all(np.diff(self.indices) > 0)):
            raise ValueError(f"{self.path}: indices must be strictly ascending")
        if image_size == "original":
            image_size = (
                int(self.metadata.get("image_height", height)),
                int(self.metadata.get("image_width", width)),
            )
        elif isinstance(image_size, int):
            image_size = (_checks.check_positive_int("image_size", image_size),) * 2
        elif image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be an int, (H, W), 'original' or None, got {image_size!r}")
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _pread(self, size: int, offset: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        if hasattr(os, "pread"):
            data = os.pread(self._fd, size, self._data_start + offset)
        else:  # pragma: no cover - platforms without pread
            os.lseek(self._fd, self._data_start + offset, os.SEEK_SET)
            data = os.read(self._fd, size)
        if len(data) != size:
            raise OSError(f"{self.path} is truncated")
        return data

    def _read_array(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]][0]
        return np.frombuffer(self._pread(end - begin, begin), dtype=dtype).reshape(entry["shape"]).copy()

    def __contains__(self, index: int) -> bool:
        row = int(np.searchsorted(self.indices, index))
        return row < len(self) and int(self.indices[row]) == int(index)

    def row(self, index: int) -> int:
        """Row of dataset ``index`` in the file (KeyError when the cache does not hold it)."""
        row = int(np.searchsorted(self.indices, index))
        if row >= len(self) or int(self.indices[row]) != int(index):
            raise KeyError(f"dataset index {index} is not in saliency cache {self.path}")
        return row

    def stored(self, index: int) -> np.ndarray:
        """Map of dataset ``index`` as stored: (h, w) float16 in [0, 1]."""
        begin = self._entries["maps"]["data_offsets"][0] + self.row(index) * self._map_bytes
        return np.frombuffer(self._pread(self._map_bytes, begin), dtype=np.float16).reshape(self.map_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Map of dataset ``index``: (H, W) float32, non-negative, resized to ``image_size``."""
        saliency = torch.from_numpy(self.stored(index).astype(np.float32))
        if self.image_size is not None and self.image_size != self.map_size:
            saliency = F.interpolate(
                saliency[None, None], size=self.image_size, mode="bilinear", align_corners=False
            )
            saliency = saliency[0, 0].clamp_min_(0.0)
        return saliency

    def batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Maps of several dataset indices stacked: (B, H, W) float32, e.g. for a ``collate_fn``."""
        return torch.stack([self[int(i)] for i in indices])


# -- building ------------------------------------------------------------------------------------
def _fingerprint(settings: dict[str, Any], indices: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(indices.astype(np.int64).tobytes())
    return digest.hexdigest()


def _compute_part(model, dataset, positions, indices, batch_size, device, size, saliency_kwargs, num_workers):
    subset = torch.utils.data.Subset(dataset, [int(indices[p]) for p in positions])
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    for images, labels in loader:
        maps = functional.saliency_map(model, images.to(device), labels.to(device), **saliency_kwargs)
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("the model's saliency is not finite (NaN/Inf loss or gradient) for some samples")
        if size is not None and tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[:, None], size=size, mode="area")[:, 0]
        peak = maps.flatten(1).amax(1)
        scaled = maps / torch.where(peak > 0, peak, 1.0).view(-1, 1, 1)
        # The batch loss is a mean over the batch: times B, the scale is the per-sample loss's.
        yield scaled.to(torch.float16).cpu().numpy(), (peak.float() * images.shape[0]).cpu().numpy()


def build_cache(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    output: str | os.PathLike,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 256,
    size: int | None = None,
    train_mode: bool = False,
    saliency_loss: str = _D.saliency_loss,
    saliency_reduce: str = _D.saliency_reduce,
    blur_kernel: int = _D.blur_kernel,
    blur_sigma: float = _D.blur_sigma,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    part_size: int | None = None,
    restart: bool = False,
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Compute the saliency of every sample and write the cache file (see the module docstring).

    Args:
        model: trained classifier; run in eval mode (``train_mode=False``, deterministic) or train mode.
        dataset: ``dataset[i] -> (image (C, H, W) float normalised, label int)``, all images one size.
        output: the ``.safetensors`` file to write.
        indices: dataset indices to cover (default all), stored ascending.
        size: store maps area-downsampled to ``size x size`` (default: image size).
        part_size: samples per resumable part (default ``16 * batch_size``).
        restart: discard the partial results of an earlier run instead of continuing them.
        metadata: extra string entries for the file's metadata (e.g. model name, data path).

    Returns:
        The output path.
    """
    _checks.check_positive_int("batch_size", batch_size)
    SageConfig(
        saliency_loss=saliency_loss,
        saliency_reduce=saliency_reduce,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
    )  # the options' rules, once, before any work
    if size is not None:
        _checks.check_positive_int("size", size)
    output = Path(output)
    positions_all = (
        np.arange(len(dataset)) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    )
    if positions_all.size == 0:
        raise ValueError("indices must name at least one sample")
    if positions_all[0] < 0 or positions_all[-1] >= len(dataset):
        raise ValueError(f"indices must lie in [0, {len(dataset) - 1}]")
    first_image = dataset[int(positions_all[0])][0]
    image_size = tuple(int(s) for s in first_image.shape[-2:])
    map_size = image_size if size is None else (size, size)
    if part_size is None:  # parts of at most 16 batches and about 64 MB
        part_size = max(
            batch_size, min(16, (1 << 26) // (2 * map_size[0] * map_size[1] * batch_size)) * batch_size
        )
    _checks.check_positive_int("part_size", part_size)
    saliency_kwargs = dict(
        loss=saliency_loss, reduce=saliency_reduce, blur_kernel=blur_kernel, blur_sigma=blur_sigma
    )
    settings = dict(
        saliency_kwargs, map_size=map_size, image_size=image_size, train_mode=train_mode, **(metadata or {})
    )
    fingerprint = _fingerprint(settings, positions_all)
    partial = output.with_name(output.name + ".partial")
    if restart and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    stamp = partial / "fingerprint.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        raise ValueError(
            f"{partial} holds a build with other settings or data; pass restart=True (--restart) "
            "to discard it"
        )
    atomic_write_text(stamp, fingerprint)
    count = positions_all.size
    parts = [range(start, min(start + part_size, count)) for start in range(0, count, part_size)]
    part_path = lambda k: partial / f"part-{k:06d}.safetensors"  # noqa: E731
    done = sum(len(p) for k, p in enumerate(parts) if part_path(k).is_file())
    was_training = model.training
    model.train(train_mode)
    from tqdm.auto import tqdm

    try:
        with tqdm(total=count, initial=done, unit="img", desc="saliency", disable=not progress) as bar:
            for k, part in enumerate(parts):
                if part_path(k).is_file():
                    continue
                pieces = list(
                    _compute_part(
                        model,
                        dataset,
                        part,
                        positions_all,
                        batch_size,
                        device,
                        map_size,
                        saliency_kwargs,
                        num_workers,
                    )
                )
                maps = np.concatenate([p[0] for p in pieces])
                scales = np.concatenate([p[1] for p in pieces])
                arrays = {"maps": ("F16", maps.shape), "scales": ("F32", scales.shape)}
                _write_safetensors(part_path(k), arrays, [("maps", maps), ("scales", scales)], {})
                bar.update(len(part))
    finally:
        model.train(was_training)
    info = {
        "format": "timm_sage.saliency_cache",
        "version": FORMAT_VERSION,
        "image_height": str(image_size[0]),
        "image_width": str(image_size[1]),
        "fingerprint": fingerprint,
        **{key: str(value) for key, value in saliency_kwargs.items()},
        "train_mode": str(train_mode),
        **{str(key): str(value) for key, value in (metadata or {}).items()},
    }

    def chunks():
        yield "indices", positions_all
        for name in ("scales", "maps"):
            for k in range(len(parts)):
                with open(part_path(k), "rb") as handle:
                    header, start = _read_header(handle)
                    begin, end = header[name]["data_offsets"]
                    handle.seek(start + begin)
                    array = np.frombuffer(handle.read(end - begin), dtype=_DTYPES[header[name]["dtype"]][0])
                yield name, array

    arrays = {"indices": ("I64", (count,)), "scales": ("F32", (count,)), "maps": ("F16", (count, *map_size))}
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_safetensors(output, arrays, chunks(), info)
    shutil.rmtree(partial)
    return output


# -- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``timm-sage saliency``."""
    parser.add_argument("--model", required=True, help="timm model name (timm_sage's CIFAR models included)")
    parser.add_argument(
        "--checkpoint", required=True, help="trained weights (.pth/.pt/.safetensors, timm layout)"
    )
    parser.add_argument(
        "--data", required=True, help="'fashion-mnist', a folder of idx files, or an ImageFolder tree"
    )
    parser.add_argument("-o", "--output", required=True, help="the .safetensors cache to write")
    parser.add_argument(
        "--split", default="train", choices=("train", "test"), help="idx split (default train)"
    )
    parser.add_argument("--size", type=int, default=None, help="store maps downsampled to SIZE x SIZE")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=None, help="default: from the data")
    parser.add_argument(
        "--in-chans", type=int, default=None, help="model input channels (default: the data's)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this size first")
    parser.add_argument(
        "--mean", type=float, nargs="+", default=None, help="normalisation mean (per channel)"
    )
    parser.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (per channel)")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT samples")
    parser.add_argument(
        "--train-mode", action="store_true", help="run the model in train mode (default eval)"
    )
    add_option_arguments(parser, ("saliency_loss", "saliency_reduce", "blur_kernel", "blur_sigma"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--restart", action="store_true", help="discard partial results of an earlier run")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``timm-sage saliency``."""
    from timm_sage.data.idx import open_dataset
    from timm_sage.models.checkpoint import build_model

    dataset, num_classes, in_chans = open_dataset(
        args.data,
        split=args.split,
        image_size=args.image_size,
        in_chans=args.in_chans,
        mean=args.mean,
        std=args.std,
    )
    num_classes = args.num_classes or num_classes
    stat = os.stat(args.checkpoint) if os.path.isfile(args.checkpoint) else None
    model = build_model(args.model, in_chans, num_classes, args.checkpoint).to(args.device)
    indices = (
        None
        if args.limit is None
        else np.arange(min(_checks.check_positive_int("limit", args.limit), len(dataset)))
    )
    path = build_cache(
        model,
        dataset,
        args.output,
        indices=indices,
        batch_size=args.batch_size,
        size=args.size,
        train_mode=args.train_mode,
        saliency_loss=args.saliency_loss,
        saliency_reduce=args.saliency_reduce,
        blur_kernel=args.blur_kernel,
        blur_sigma=args.blur_sigma,
        device=args.device,
        num_workers=args.workers,
        restart=args.restart,
        progress=not args.no_progress,
        metadata={
            "model": args.model,
            "checkpoint": str(args.checkpoint),
            "data": str(args.data),
            "split": args.split,
            "checkpoint_stat": f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "",
        },
    )
    cache = SaliencyCache(path)
    print(f"wrote {len(cache)} saliency maps of {cache.map_size[0]}x{cache.map_size[1]} to {path}")
    return 0
