"""torch.compile and SAGE: a compiled model under SageMixup; the search kernel traced without graph breaks.

Backends are ``eager`` / ``aot_eager`` (no C compiler, fast on CPU): they run dynamo's tracing and
AOTAutograd, which is where graph breaks and functionalisation problems show.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from timm_sage import SageMixup, functional
from timm_sage.core import search as _search

NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _maps(batch: int = 5, size: int = 8, seed: int = 0):
    """Normalised maps ``s0, s1`` (B, H, W), raw saliency, images (B, 3, H, W), perm and candidates."""
    gen = torch.Generator().manual_seed(seed)
    saliency = torch.rand(batch, size, size, generator=gen)
    x = torch.randn(batch, 3, size, size, generator=gen)
    perm = torch.randperm(batch, generator=gen)
    translations = functional.sample_translations(size, size, 0.2, generator=gen)
    s0, s1 = functional.normalise_saliency(saliency, perm, torch.full((batch,), 0.4))
    return s0, s1, saliency, x, perm, translations


def _exact_core(x, saliency, perm, prior, translations):
    """sage_mix without its argument checks, from the kernel functions (exact search).

    x (B, C, H, W) float32, saliency (B, H, W), perm (B,) long, prior (B,) float32, translations (K, 2) long.
    """
    s0, s1 = functional.normalise_saliency(saliency, perm, prior)
    translation = translations[_search.best_translation(s0, s1, translations)]
    mask = _search.mixing_mask(s0, _search.shift_images(s1[:, None], translation)[:, 0])
    partner = _search.shift_images(x[perm], translation)
    return partner.lerp(x, mask[:, None]), mask.mean((1, 2)), translation


def test_translation_scores_has_no_graph_breaks() -> None:
    s0, s1, *_, translations = _maps()
    explanation = torch._dynamo.explain(_search.translation_scores)(s0, s1, translations, chunk_elements=64)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize(
    "function", [_search.shift_images, _search.mixing_mask, functional.normalise_saliency]
)
def test_kernel_helpers_have_no_graph_breaks(function) -> None:
    s0, s1, saliency, x, perm, translations = _maps()
    args = {
        _search.shift_images: (x, translations[: x.shape[0]]),
        _search.mixing_mask: (s0, s1),
        functional.normalise_saliency: (saliency, perm, torch.full((x.shape[0],), 0.3)),
    }[function]
    assert torch._dynamo.explain(function)(*args).graph_break_count == 0


def test_exact_search_core_compiles_fullgraph_and_matches_sage_mix() -> None:
    _, _, saliency, x, perm, translations = _maps(batch=6, size=9, seed=2)
    prior = torch.full((6,), 0.45)
    explanation = torch._dynamo.explain(_exact_core)(x, saliency, perm, prior, translations)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_exact_core, backend="aot_eager", fullgraph=True)
    images, lam, translation = compiled(x, saliency, perm, prior, translations)
    reference = functional.sage_mix(x, saliency, perm=perm, prior=0.45, translations=translations)
    assert torch.equal(translation, reference.translation)
    assert torch.allclose(lam, reference.lam, atol=1e-6)
    assert torch.allclose(images, reference.images, atol=1e-6)


def test_pooled_search_compiles_with_no_break_and_matches() -> None:
    """The pooled search has no data-dependent shape (repeats are dropped on the host, where candidates
    are drawn): no graph break, and compiled results equal eager ones."""
    s0, s1, *_, translations = _maps(batch=4, size=16, seed=4)
    explanation = torch._dynamo.explain(_search.best_translation)(s0, s1, translations, search_size=6)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(_search.best_translation, backend="eager")
    got = compiled(s0, s1, translations, search_size=6)
    assert torch.equal(got, _search.best_translation(s0, s1, translations, search_size=6))


def test_sage_mix_core_has_no_graph_breaks() -> None:
    _, _, saliency, x, perm, translations = _maps()
    core = functional._sage_mix_core
    explanation = torch._dynamo.explain(core)(
        x, saliency, perm, torch.full((5,), 0.4), translations, None, None
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_sage_mix_graph_breaks_only_in_validation() -> None:
    """Every graph break of sage_mix today comes from an argument check (.item(), equal), not the kernel."""
    _, _, saliency, x, perm, translations = _maps()
    explanation = torch._dynamo.explain(functional.sage_mix)(
        x, saliency, perm=perm, prior=0.4, translations=translations
    )
    reasons = " ".join(str(reason.reason) for reason in explanation.break_reasons)
    assert explanation.graph_break_count > 0  # the count is reported in docs/reliability.md
    assert "item()" in reasons or "equal" in reasons
    for kernel_name in ("translation_scores", "shift_images", "mixing_mask", "unfold", "vecdot"):
        for reason in explanation.break_reasons:
            frames = " ".join(frame.name for frame in reason.user_stack)
            assert kernel_name not in frames, f"graph break inside {kernel_name}: {reason.reason}"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _train(compiled: bool, update_ratio: float, steps: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = _Net()
    model = torch.compile(net, backend="aot_eager") if compiled else net
    mixer = SageMixup(
        mode="sage", model=model, num_classes=NUM_CLASSES, seed=11, rand_pos=0.1, update_ratio=update_ratio
    )
    assert mixer.model is net  # the saliency pass runs the bare module
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(6, 3, 12, 12, generator=gen), torch.randint(0, NUM_CLASSES, (6,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        images, target = mixer(x, y)
        loss = torch.sum(-target * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        optimizer.step()
    return grads


@pytest.mark.parametrize("update_ratio", [1.0, 0.5])
def test_compiled_model_trains_with_sage_mixup(update_ratio: float) -> None:
    eager, compiled = _train(False, update_ratio), _train(True, update_ratio)
    for reference, got in zip(eager, compiled, strict=True):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, reference, rtol=1e-4, atol=1e-6)


def _five_steps(model, mixer, steps: int = 5, size: int = 12):
    """``steps`` SAGE training steps of ``model`` with ``mixer``; the plain module's weights after them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        x, y = (
            torch.randn(6, 3, size, size, generator=gen),
            torch.randint(0, NUM_CLASSES, (6,), generator=gen),
        )
        optimizer.zero_grad(set_to_none=True)
        images, target = mixer(x, y)
        loss = torch.sum(-target * F.log_softmax(model(images), -1), -1).mean() * mixer.loss_weight
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in mixer.model.parameters()]


@pytest.mark.parametrize("update_ratio", [1.0, 0.5])
def test_compiled_saliency_pass_compiles_once_and_not_again_over_five_steps(update_ratio: float) -> None:
    """With a compiled model the saliency pass runs through the compiled graph: one more graph than the
    training forward (its input requires grad), compiled at the first step, none after, no graph break.
    On the code before saliency_compile (0.x: the pass ran the unwrapped module eagerly) frame_count is 1:
    the saliency pass never entered the compiler, and this test fails there."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    net = _Net()
    counter = CompileCounterWithBackend("aot_eager")
    model = torch.compile(net, backend=counter)
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=1, rand_pos=0.1,
                      update_ratio=update_ratio)  # fmt: skip
    # The pass runs the plain module through a thin module of its own, compiled with the model's settings.
    assert mixer.model is net and mixer.saliency_module._orig_mod is net
    assert mixer.saliency_module.dynamo_ctx is model.dynamo_ctx
    counters.clear()
    _five_steps(model, mixer, steps=1)
    assert counter.frame_count == 2  # the training forward and the saliency forward
    _five_steps(model, mixer, steps=4)
    assert counter.frame_count == 2, "recompiled after the first step"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2


def test_saliency_compile_eager_keeps_the_pass_out_of_the_compiler() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    net = _Net()
    counter = CompileCounterWithBackend("aot_eager")
    model = torch.compile(net, backend=counter)
    mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=1, saliency_compile="eager")
    assert mixer.saliency_module is net
    _five_steps(model, mixer, steps=2)
    assert counter.frame_count == 1  # the training forward only
    with pytest.raises(ValueError, match="saliency_compile"):
        SageMixup(mode="sage", num_classes=NUM_CLASSES, saliency_compile="inductor")


def test_compile_options_compile_the_pass_of_a_model_compiled_after_binding() -> None:
    """timm's train.py compiles the model after the plugin has seen it: compile_options (its
    --torchcompile backend) compile the saliency pass all the same."""
    from torch._dynamo.testing import CompileCounterWithBackend

    net = _Net()
    counter = CompileCounterWithBackend("aot_eager")
    mixer = SageMixup(mode="sage", model=net, num_classes=NUM_CLASSES, seed=1,
                      compile_options={"backend": counter})  # fmt: skip
    assert mixer.saliency_module is not net and mixer.saliency_module._orig_mod is net
    mixer(torch.randn(4, 3, 10, 10), torch.arange(4) % NUM_CLASSES)
    assert counter.frame_count == 1
    with pytest.raises(TypeError, match="compile_options"):
        SageMixup(mode="sage", num_classes=NUM_CLASSES, compile_options="inductor")


def test_a_compiled_wrapper_outside_another_wrapper_compiles_the_plain_module_with_its_settings() -> None:
    from timm_sage.config import SageConfig
    from timm_sage.mixup import saliency_model

    net = _Net()
    outer = torch.compile(nn.DataParallel(net), backend="aot_eager")  # compile(DDP(model)) has this shape
    view = saliency_model(outer, SageConfig())
    assert view is not outer and view._orig_mod is net and view.dynamo_ctx is outer.dynamo_ctx
    assert saliency_model(outer, SageConfig(saliency_compile="eager")) is net
    assert saliency_model(net, SageConfig()) is net  # nothing compiled: eager


def test_inductor_saliency_and_weights_match_eager() -> None:
    """CPU inductor (gcc): the compiled saliency pass gives the eager saliency within float tolerance, and
    three SageMixup steps (update_ratio 0.7: the clean term's gradient through the compiled backward)
    leave the same weights."""
    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        net = _Net()
        model = torch.compile(net, backend="inductor") if compiled else net
        mixer = SageMixup(mode="sage", model=model, num_classes=NUM_CLASSES, seed=3, rand_pos=0.1,
                          update_ratio=0.7)  # fmt: skip
        weights = _five_steps(model, mixer, steps=3)
        results[compiled] = (weights, mixer.last.saliency)
    (eager_weights, eager_saliency), (compiled_weights, compiled_saliency) = results[False], results[True]
    assert torch.allclose(compiled_saliency, eager_saliency, rtol=1e-4, atol=1e-6)
    for got, want in zip(compiled_weights, eager_weights, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
