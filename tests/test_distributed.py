"""SageMixup under DistributedDataParallel: two CPU processes on the gloo backend.

Each rank mixes its own shard with its own generator (seed = base seed + rank). The saliency pass runs
through the unwrapped module, so it must not start DDP's gradient reduction; with ``update_ratio < 1``
the clean-loss gradients it computes (carried by ``loss_weight`` into the backward of the weighted mixed
loss) must then be averaged by DDP's own backward together with the mixed-loss gradients, so that every
rank takes the same step.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timm_sage import SageMixup, functional

WORLD = 2
BASE_SEED = 1234
NUM_CLASSES = 4
GLOBAL_BATCH = 16
STEPS = 3
# (update_ratio, find_unused_parameters) of each phase; one spawn runs them all to keep start-up cheap.
PHASES = ((1.0, False), (0.5, False), (0.5, True))


class TinyCNN(nn.Module):
    """(B, 3, 16, 16) -> (B, NUM_CLASSES) logits; BatchNorm so DDP also broadcasts buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.head(h.mean((2, 3)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (16, 3, 16, 16) images and (16,) labels on every rank, different per step."""
    gen = torch.Generator().manual_seed(10_000 + step)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=gen), torch.randint(
        0, NUM_CLASSES, (GLOBAL_BATCH,), generator=gen
    )


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _gather(vector: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(vector) for _ in range(WORLD)]
    dist.all_gather(out, vector.contiguous())
    return out


def _counting_allreduce(state, bucket):  # no annotations: DDP checks them and they are strings here
    """A DDP comm hook equal to the default (average) that counts how often DDP reduces.

    ``state``: dict with a ``"calls"`` counter; ``bucket``: ``dist.GradBucket``; returns a Future.
    """
    state["calls"] += 1
    tensor = bucket.buffer().div_(WORLD)
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def _run_phase(rank: int, update_ratio: float, find_unused: bool) -> dict:
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts rank 0's)
    ddp = DistributedDataParallel(TinyCNN(), find_unused_parameters=find_unused)
    hook_state = {"calls": 0}
    ddp.register_comm_hook(hook_state, _counting_allreduce)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    mixer = SageMixup(
        mode="sage",
        model=ddp,
        num_classes=NUM_CLASSES,
        label_smoothing=0.0,
        rand_pos=0.05,
        update_ratio=update_ratio,
        seed=BASE_SEED + rank,
    )
    assert mixer.model is ddp.module
    record: dict = {"perms": [], "translations": [], "clean_grad_weight": mixer.clean_grad_weight}
    for step in range(STEPS):
        x_all, y_all = _global_batch(step)
        x, y = x_all[rank::WORLD], y_all[rank::WORLD]
        reference = copy.deepcopy(ddp.module)  # the local computation, replayed without DDP
        optimizer.zero_grad(set_to_none=True)
        calls_before = hook_state["calls"]
        mixed, soft = mixer(x, y)
        # The saliency pass ran through the bare module: DDP reduced nothing.
        assert hook_state["calls"] == calls_before, "the saliency pass triggered a DDP gradient reduction"
        assert mixer.last.method == "sage"
        assert all(p.grad is None for p in ddp.parameters()), "the saliency pass wrote .grad"
        (_soft_ce(ddp(mixed), soft) * mixer.loss_weight).backward()
        assert hook_state["calls"] > calls_before, "DDP did not reduce the mixed-loss gradients"
        # Expected DDP gradient: the mean over ranks of (w * clean grad + r * mixed grad), computed locally.
        functional.saliency_pass(reference, x, y, param_grad_weight=mixer.clean_grad_weight)
        (_soft_ce(reference(mixed), soft) * update_ratio).backward()
        local = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in reference.parameters()
            ]
        )
        expected = torch.stack(_gather(local)).mean(0)
        got = _flat_grads(ddp.module)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), (
            f"rank {rank} step {step}: DDP gradient is not the rank mean of clean + mixed gradients, "
            f"max error {float((got - expected).abs().max()):.3g}"
        )
        optimizer.step()
        params = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
        gathered = _gather(params)
        assert torch.equal(gathered[0], gathered[1]), f"step {step}: parameters differ across ranks"
        record["perms"].append(mixer.last.perm.tolist())
        record["translations"].append(mixer.last.translation.tolist())
    return record


def _join_group(rank: int, port: int) -> None:
    """One thread, and this rank in the gloo group of WORLD ranks on ``port``."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))


def _worker(rank: int, port: int, out_dir: str) -> None:
    _join_group(rank, port)
    try:
        records = [_run_phase(rank, ratio, unused) for ratio, unused in PHASES]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(records))


def _spawn(out_dir: Path, timeout_s: float = 120.0) -> None:
    context = mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f"DDP workers did not finish within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = tmp_path_factory.mktemp("ddp")
    _spawn(out_dir)
    return [json.loads(Path(out_dir, f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def test_ddp_sage_steps_keep_ranks_in_sync(ddp_records: list[list[dict]]) -> None:
    """Every phase ran every step on both ranks; the in-worker asserts (no reduction in the saliency pass,
    DDP grad == rank mean of clean + mixed grads, identical parameters) held, else the spawn fails."""
    for records in ddp_records:
        assert len(records) == len(PHASES)
        for record in records:
            assert len(record["perms"]) == STEPS
            assert all(sorted(perm) == list(range(GLOBAL_BATCH // WORLD)) for perm in record["perms"])


def test_ddp_ranks_draw_from_their_own_streams(ddp_records: list[list[dict]]) -> None:
    """seed = base seed + rank: the ranks' partner draws and chosen translations differ."""
    for phase in range(len(PHASES)):
        rank0, rank1 = ddp_records[0][phase], ddp_records[1][phase]
        assert rank0["perms"] != rank1["perms"]
        assert rank0["translations"] != rank1["translations"]


def test_ddp_rank_stream_matches_a_single_process_mixer(ddp_records: list[list[dict]]) -> None:
    """Rank r's partner draws are exactly those of a single-process SageMixup(seed=base + r)."""
    for rank in range(WORLD):
        replay = SageMixup(
            mode="sage", num_classes=NUM_CLASSES, label_smoothing=0.0, rand_pos=0.05, seed=BASE_SEED + rank
        )
        for step in range(STEPS):
            x_all, y_all = _global_batch(step)
            x, y = x_all[rank::WORLD], y_all[rank::WORLD]
            replay(x, y, saliency=torch.ones(x.shape[0], 16, 16))  # perm does not depend on saliency
            assert replay.last.perm.tolist() == ddp_records[rank][0]["perms"][step]


# ------------------------------------------------------------------ one method per step on every rank
COIN_STEPS = 12


def _coin_worker(rank: int, port: int, out_dir: str) -> None:
    """train.py's seeding (``seed + rank``) and the plugin's mixer, with CutMix switching and prob < 1."""
    import argparse

    from timm.data import Mixup

    from timm_sage import plugin

    _join_group(rank, port)
    try:
        args = argparse.Namespace(mixup_mode="sage", mixup=1.0, cutmix=1.0, cutmix_minmax=None, seed=42)
        namespace = {"Mixup": Mixup}
        state = plugin.install(namespace, args)
        args.rank = rank  # as train.py: known after the plugin is installed, before the mixer is built
        torch.manual_seed(42 + rank)  # train.py's random_seed(args.seed, args.rank)
        mixer = namespace["Mixup"](
            mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, switch_prob=0.5, mode="sage", label_smoothing=0.0,
            num_classes=NUM_CLASSES,
        )  # fmt: skip
        state.set_model(TinyCNN(), replace=True)
        methods, perms = [], []
        for step in range(COIN_STEPS):
            x_all, y_all = _global_batch(step)
            mixer(x_all[rank::WORLD], y_all[rank::WORLD])
            methods.append(mixer.last.method)
            perms.append(mixer.last.perm.tolist() if mixer.last.method == "sage" else None)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"coins{rank}.json").write_text(json.dumps({"methods": methods, "perms": perms}))


def test_every_rank_takes_the_same_method_at_every_step(tmp_path: Path) -> None:
    """CutMix switching and prob < 1 through the plugin: the method coins are shared (train.py's --seed),
    so with --sync-bn no rank waits in a saliency pass the others skip; partners stay per rank."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    context = mp.spawn(_coin_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120.0
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail("workers did not finish within 120 s")
    rank0, rank1 = (json.loads(Path(tmp_path, f"coins{r}.json").read_text()) for r in range(WORLD))
    assert rank0["methods"] == rank1["methods"]
    assert set(rank0["methods"]) == {"sage", "cutmix", "none"}  # every branch of the coins was taken
    sage_steps = [k for k, method in enumerate(rank0["methods"]) if method == "sage"]
    assert any(rank0["perms"][k] != rank1["perms"][k] for k in sage_steps)  # partners are per rank
