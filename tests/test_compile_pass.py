"""The compiled saliency pass computes only what it needs, and leaves the training graph alone.

* With ``update_ratio`` 1 (or ``clean_term="in_batch"``) the clean term is not taken from the saliency
  pass: its compiled backward computes the input gradient only. Read off the ``convolution_backward``
  output masks of the backward graphs that AOTAutograd hands its compiler (``[input, weight, bias]``).
* The pass runs through a thin module with its own ``forward`` (its own dynamo cache entries): with
  ``saliency_scale`` 0.5 or ``saliency_size`` the pass's smaller input never reaches the cache of the
  model's ``forward``, so the training graph is compiled once, with static shapes.

Backends: ``aot_eager``-like (AOTAutograd, no C compiler), fast on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from timm_sage import SageMixup

NUM_CLASSES = 4
CONV_BACKWARD = torch.ops.aten.convolution_backward.default


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv2(F.relu(self.bn(self.conv1(x))))).mean((2, 3)))


def _recording_backend() -> tuple[object, dict[str, list[torch.fx.GraphModule]]]:
    """An AOTAutograd backend that keeps every forward and backward graph it compiles."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs: dict[str, list[torch.fx.GraphModule]] = {"forward": [], "backward": []}

    def keep(kind: str):
        def compiler(gm: torch.fx.GraphModule, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)

        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")), graphs


def _steps(model: nn.Module, mixer: SageMixup, steps: int, size: int = 16) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(6, 3, size, size, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (6,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        images, target = mixer(x, y)
        loss = torch.sum(-target * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
        loss.backward()
        optimizer.step()


def _conv_masks(graph: torch.fx.GraphModule) -> list[tuple[bool, ...]]:
    return [tuple(node.args[-1]) for node in graph.graph.nodes if node.target is CONV_BACKWARD]


@pytest.mark.parametrize(
    ("options", "weights_needed"),
    [
        ({"update_ratio": 1.0}, False),
        ({"update_ratio": 0.7, "clean_term": "in_batch"}, False),
        ({"update_ratio": 0.7}, True),  # separate_pass: the clean term's weight gradient is the pass's
    ],
)
def test_compiled_saliency_backward_computes_weight_gradients_only_when_used(options, weights_needed) -> None:
    """Before the thin pass module, update_ratio 1 failed here: both convolution_backward nodes
    of the saliency pass's backward had output mask [True, True, ...] (weight gradients thrown away)."""
    backend, graphs = _recording_backend()
    torch.manual_seed(0)
    net = _Net()
    model = torch.compile(net, backend=backend)
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=1, rand_pos=0.1, **options)
    _steps(model, mixer, steps=2)
    # The saliency pass's backward is the one that computes an input gradient for every conv, the first
    # one included (the training forward's input, the mixed batch, needs none).
    masks = [_conv_masks(g) for g in graphs["backward"]]
    saliency = [m for m in masks if all(mask[0] for mask in m)]
    training = [m for m in masks if not all(mask[0] for mask in m)]
    assert len(saliency) == 1 and len(training) == 1, masks
    assert len(saliency[0]) == 2  # both convolutions
    assert all(mask[1] == weights_needed for mask in saliency[0]), saliency[0]
    assert all(not any(mask[1:]) for mask in saliency[0]) or weights_needed
    assert all(mask[1] for mask in training[0])  # training still computes its weight gradients
    assert all(torch.isfinite(p).all() for p in net.parameters())


def _is_dynamic(graph: torch.fx.GraphModule) -> bool:
    for node in graph.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("example_value")
        if isinstance(value, torch.SymInt):
            return True
        if isinstance(value, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in value.shape):
            return True
    return False


@pytest.mark.parametrize("options", [{"saliency_scale": 0.5}, {"saliency_size": 8}])
@pytest.mark.parametrize("update_ratio", [1.0, 0.7])
def test_cheap_saliency_leaves_the_training_graph_static_over_five_steps(options, update_ratio) -> None:
    """Before the thin pass module this failed at the ``_is_dynamic`` assert: the pass compiled
    the model's own forward at the small size first, and the training forward then compiled with symbolic
    H and W (dynamo's automatic dynamic shapes on the shared cache entry)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    counter = CompileCounterWithBackend("aot_eager")
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return counter(gm, example_inputs)

    torch.manual_seed(0)
    net = _Net()
    model = torch.compile(net, backend=backend)
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=1, rand_pos=0.1,
                      update_ratio=update_ratio, **options)  # fmt: skip
    counters.clear()
    _steps(model, mixer, steps=5)
    assert counter.frame_count == 2  # the training forward and the saliency pass, once each
    assert not [g for g in graphs if _is_dynamic(g)], "a graph compiled with symbolic shapes"
    assert not counters["graph_break"], dict(counters["graph_break"])
    # The training forward's graph takes the full-size batch (16 x 16), the pass's the small one (8 x 8).
    sizes = sorted(
        tuple(node.meta["example_value"].shape[-2:])
        for g in graphs
        for node in g.graph.nodes
        if node.op == "placeholder" and getattr(node.meta.get("example_value"), "ndim", 0) == 4
        and node.meta["example_value"].shape[-1] > 3  # the batch of RGB images, not conv1's 3 x 3 weight
    )
    assert sizes == [(8, 8), (16, 16)], sizes
