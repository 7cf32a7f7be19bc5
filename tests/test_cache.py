"""timm_sage.data.cache: build -> read roundtrip, resume, the CLI, bounded memory in DataLoader workers."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader

from timm_sage import functional
from timm_sage.data.cache import SaliencyCache, _write_safetensors, build_cache
from timm_sage.data.idx import open_dataset
from timm_sage.tools import cli

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST idx files not installed")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 28 * 28, 10)
        self.calls = 0
        self.fail_after: int | None = None

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def fmnist():
    if not os.path.isdir(FMNIST):
        pytest.skip("Fashion-MNIST idx files not installed")
    return open_dataset("fashion-mnist")[0]


def _model() -> _Tiny:
    torch.manual_seed(0)
    return _Tiny()


def _direct(model, dataset, indices, size=None):
    x = torch.stack([dataset[i][0] for i in indices])
    y = torch.tensor([dataset[i][1] for i in indices])
    model.eval()
    maps = functional.saliency_map(model, x, y)
    if size is not None:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="area")[:, 0]
    return maps, maps / maps.flatten(1).amax(1).view(-1, 1, 1)


def test_roundtrip_against_direct_maps(fmnist, tmp_path):
    model = _model()
    indices = np.array([5, 0, 17, 3, 99, 42])
    path = build_cache(
        model, fmnist, tmp_path / "maps.safetensors", indices=indices, batch_size=4, progress=False
    )
    assert model.training  # the mode is restored after the (eval-mode) build
    cache = SaliencyCache(path)
    assert cache.indices.tolist() == sorted(indices.tolist()) and len(cache) == 6
    raw, expected = _direct(model, fmnist, cache.indices.tolist())
    got = cache.batch(cache.indices)
    assert got.dtype == torch.float32 and got.shape == (6, 28, 28)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)  # float16 storage
    torch.testing.assert_close(torch.from_numpy(cache.scales), raw.flatten(1).amax(1) * 6, rtol=1e-5, atol=0)
    assert 17 in cache and 1 not in cache
    with pytest.raises(KeyError, match="not in saliency cache"):
        cache[1]
    with safe_open(str(path), framework="pt") as handle:  # a standard safetensors file
        assert handle.get_tensor("maps").dtype == torch.float16
        assert handle.metadata()["image_height"] == "28"
    assert not (tmp_path / "maps.safetensors.partial").exists()


def test_downsampled_storage_upsampled_on_read(fmnist, tmp_path):
    model = _model()
    path = build_cache(model, fmnist, tmp_path / "m.safetensors", indices=range(8), size=7, progress=False)
    _, expected = _direct(model, fmnist, range(8), size=7)
    cache = SaliencyCache(path)
    assert cache.map_size == (7, 7) and cache.image_size == (28, 28)
    stored = torch.from_numpy(np.stack([cache.stored(i) for i in range(8)]).astype(np.float32))
    torch.testing.assert_close(stored, expected, atol=1e-3, rtol=1e-3)
    read = cache[3]
    assert read.shape == (28, 28) and bool((read >= 0).all())
    torch.testing.assert_close(
        read, F.interpolate(stored[3][None, None], size=(28, 28), mode="bilinear")[0, 0]
    )
    assert SaliencyCache(path, image_size=None)[3].shape == (7, 7)
    assert SaliencyCache(path, image_size=14)[3].shape == (14, 14)


def test_resume_after_interruption(fmnist, tmp_path):
    reference = build_cache(
        _model(),
        fmnist,
        tmp_path / "ref.safetensors",
        indices=range(40),
        batch_size=5,
        part_size=10,
        progress=False,
    )
    model = _model()
    model.fail_after = 5  # parts of 2 batches: 2 parts complete, the third is interrupted
    target = tmp_path / "out.safetensors"
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, fmnist, target, indices=range(40), batch_size=5, part_size=10, progress=False)
    partial = tmp_path / "out.safetensors.partial"
    assert sorted(p.name for p in partial.glob("part-*.safetensors")) == [
        "part-000000.safetensors",
        "part-000001.safetensors",
    ]
    assert not target.exists() and not list(tmp_path.glob("*.tmp*")) and not list(partial.glob("*.tmp*"))
    model.fail_after, model.calls = None, 0
    build_cache(model, fmnist, target, indices=range(40), batch_size=5, part_size=10, progress=False)
    assert model.calls == 4  # only the two missing parts (4 batches) were computed
    assert target.read_bytes() == reference.read_bytes()
    # A partial build with other settings is not silently mixed in.
    model.fail_after, model.calls = 1, 0
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, fmnist, target, indices=range(40), batch_size=5, part_size=5, progress=False)
    model.fail_after = None
    with pytest.raises(ValueError, match="restart"):
        build_cache(
            model, fmnist, target, indices=range(40), batch_size=5, part_size=10, size=7, progress=False
        )
    build_cache(model, fmnist, target, indices=range(40), batch_size=5, size=7, restart=True, progress=False)
    assert SaliencyCache(target).map_size == (7, 7)


def test_command_line(fmnist, tmp_path, capsys):
    import timm

    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    output = tmp_path / "cli.safetensors"
    code = cli.main(
        [
            "saliency",
            "--model",
            "resnet10t",
            "--checkpoint",
            str(checkpoint),
            "--data",
            "fashion-mnist",
            "-o",
            str(output),
            "--size",
            "14",
            "--batch-size",
            "8",
            "--limit",
            "12",
            "--no-progress",
        ]
    )
    assert code == 0 and "wrote 12 saliency maps of 14x14" in capsys.readouterr().out
    cache = SaliencyCache(output)
    assert cache.indices.tolist() == list(range(12)) and cache.metadata["model"] == "resnet10t"
    _, expected = _direct(model, fmnist, range(12), size=14)
    stored = torch.from_numpy(np.stack([cache.stored(i) for i in range(12)]).astype(np.float32))
    torch.testing.assert_close(stored, expected, atol=2e-3, rtol=2e-3)
    assert (
        cli.main(
            [
                "saliency",
                "--model",
                "resnet10t",
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--data",
                "fashion-mnist",
                "-o",
                str(output),
            ]
        )
        == 2
    )


def test_bad_files_and_pickling(tmp_path):
    with pytest.raises(FileNotFoundError):
        SaliencyCache(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"maps": torch.zeros(2, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a saliency cache"):
        SaliencyCache(tmp_path / "other.safetensors")
    path = _synthetic(tmp_path / "small.safetensors", 10)
    cache = SaliencyCache(path)
    first = cache[4]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._fd is None and torch.equal(clone[4], first)


def _synthetic(path, count: int, size: int = 28, chunk: int = 5000):
    rng = np.random.default_rng(0)

    def chunks():
        yield "indices", np.arange(count, dtype=np.int64)
        yield "scales", np.ones(count, dtype=np.float32)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            yield "maps", rng.random((n, size, size), dtype=np.float32).astype(np.float16)

    arrays = {"indices": ("I64", (count,)), "scales": ("F32", (count,)), "maps": ("F16", (count, size, size))}
    _write_safetensors(path, arrays, chunks(), {"image_height": str(size), "image_width": str(size)})
    return path


class _ReadAll(torch.utils.data.Dataset):
    """Item ``2k + w`` reads block k of the maps, so each of two workers reads every map once.

    Each item returns the worker's resident memory (from /proc/self/statm) after its reads.
    """

    def __init__(self, cache: SaliencyCache, block: int) -> None:
        self.cache, self.block = cache, block

    def __len__(self) -> int:
        return 2 * (len(self.cache) // self.block)

    def __getitem__(self, item: int):
        start = (item // 2) * self.block
        total = sum(float(self.cache[i].sum()) for i in range(start, start + self.block))
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return torch.tensor(rss, dtype=torch.float64), torch.tensor(total)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_worker_memory_stays_bounded_on_50000_maps(tmp_path):
    path = _synthetic(tmp_path / "big.safetensors", 50_000)
    file_size = path.stat().st_size
    assert file_size > 75e6
    loader = DataLoader(_ReadAll(SaliencyCache(path), 2000), batch_size=None, num_workers=2)
    rss, sums = (torch.stack(column) for column in zip(*loader, strict=True))
    assert rss.shape == (50,)
    # Both workers saw every map: the same block sums, in the same order.
    assert torch.equal(sums[0::2], sums[1::2]) and bool((sums > 0).all())
    for worker in (0, 1):
        own = rss[worker::2]
        # From the end of its first block (one-off start-up allocations done) to the end of its last one.
        growth = float(own[-1] - own[0])
        assert growth < 0.2 * file_size, (
            f"worker {worker} grew by {growth / 1e6:.1f} MB reading {file_size / 1e6:.0f} MB"
        )
