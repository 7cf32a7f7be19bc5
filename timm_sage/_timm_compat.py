"""Which timm this process imported, and whether timm_sage can serve it: features read from signatures and
attributes, never from the version string (a clone's ``1.0.29.dev0`` is neither older nor newer than a
release in any useful sense). The version and path are only named in messages.

The floor (docs/timm.md, "Supported timm versions") is the oldest release whose ``Mixup`` and
``train.py`` the plugin served in ``tests/test_timm_releases.py``.
"""

from __future__ import annotations

import inspect

import timm
from timm.data import Mixup

__all__ = ["MIXUP_TAKES_MULTI_LABEL", "TIMM_FLOOR", "check_timm", "describe_timm", "missing_features"]

# The oldest timm release the plugin served in tests/test_timm_releases.py (train.py run from inside
# that release's source tree, one SAGE step on a fake dataset).
TIMM_FLOOR = "0.9.16"

# timm's Mixup took multi_label in 1.0.31; before, SageMixup keeps the flag for its own sage mode.
MIXUP_TAKES_MULTI_LABEL = "multi_label" in inspect.signature(Mixup.__init__).parameters

# The Mixup keywords SageMixup passes on to timm, in every supported release.
_MIXUP_KEYWORDS = (
    "mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam",
    "label_smoothing", "num_classes",
)  # fmt: skip


def describe_timm() -> str:
    """``timm 1.0.29.dev0 at /path/to/pytorch-image-models/timm``: what a message should name."""
    version = getattr(timm, "__version__", "of unknown version")
    return f"timm {version} at {getattr(timm, '__file__', None) or 'an unknown path'}"


def missing_features() -> list[str]:
    """What timm_sage uses from timm and this timm lacks (empty: it can be served), read from
    signatures and attributes: timm 0.9.12 and older lack ``timm.utils.ModelEmaV3`` (``timm-sage
    train``'s EMA, and the EMA of train.py from 0.9.16 on, which the plugin unwraps); 0.6 and older lack
    ``create_loader(device=...)`` (the plugin mixes the prefetcher's device batches) and
    ``timm.models.build_model_with_cfg`` (the CIFAR networks)."""
    import timm.data
    import timm.models
    import timm.utils

    missing = []
    parameters = inspect.signature(Mixup.__init__).parameters
    absent = [name for name in _MIXUP_KEYWORDS if name not in parameters]
    if absent:
        missing.append(f"timm.data.Mixup(...) keywords {', '.join(absent)}")
    else:
        mixer = Mixup()
        attributes = ("mix_prob", "mixup_enabled", "switch_prob", "cutmix_alpha", "mixup_alpha", "mode")
        absent = [name for name in attributes if not hasattr(mixer, name)]
        if absent:
            missing.append(f"timm.data.Mixup attributes {', '.join(absent)}")
    if "device" not in inspect.signature(timm.data.create_loader).parameters:
        missing.append("timm.data.create_loader(device=...)")
    for module, name in (
        (timm.models, "build_model_with_cfg"),
        (timm.models, "register_model"),
        (timm.utils, "ModelEmaV3"),
        (timm.data.loader, "fast_collate"),
    ):
        if not hasattr(module, name):
            missing.append(f"{module.__name__}.{name}")
    return missing


def check_timm() -> None:
    """ImportError naming this timm's version and path, the floor, and what is missing, when timm_sage
    cannot serve it; nothing otherwise."""
    missing = missing_features()
    if missing:
        raise ImportError(
            f"timm_sage needs timm {TIMM_FLOOR} or later, and the timm imported here, {describe_timm()}, "
            f"lacks: {'; '.join(missing)}. A train.py run from inside a pytorch-image-models checkout "
            "imports the checkout's timm (the script's folder comes first on the path): update the "
            "checkout, or run an installed train.py"
        )
