"""Forward-only saliency maps from a network's last feature map (docs/algorithm.md, forward-only saliency).

Pure tensor functions on trusted inputs, no model and no options: the feature map to a spatial grid, the
class activation map (CAM) of the label, the channel norm of the features, and the finish that makes any
of them a saliency map like the paper's (non-negative, upsampled to the image, Gaussian-blurred). Nothing
here reads a device value back to the host; shapes are checked, values are not. The model side (which
``forward_features`` and which classifier) is :mod:`timm_sage.core.feature_saliency`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timm_sage.core.saliency import blur_maps

# The layouts a feature map comes in: timm CNNs give (B, C, h, w); Swin-like models (B, h, w, C)
# (their ``output_fmt`` is "NHWC"); ViTs a token sequence (B, N, C) with N = prefix tokens + h * w.
LAYOUTS = ("NCHW", "NHWC", "NLC")


def tokens_to_grid(tokens: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """ViT tokens (B, N, C) -> patch feature map (B, C, h, w).

    The first ``num_prefix_tokens`` tokens (class and register tokens: timm's ``num_prefix_tokens``) are
    dropped; the ``h * w`` patch tokens that remain are in raster order (row by row), as a patch embedding
    flattens them, and are laid out on ``grid = (h, w)``.

    Raises:
        ValueError: ``N - num_prefix_tokens != h * w`` (the token count does not fit the grid).
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape (B, N, C), got {tuple(tokens.shape)}")
    height, width = grid
    patches = tokens.shape[1] - num_prefix_tokens
    if num_prefix_tokens < 0 or patches != height * width:
        raise ValueError(
            f"tokens: {tokens.shape[1]} tokens less {num_prefix_tokens} prefix (class/register) tokens "
            f"do not fill the {height}x{width} patch grid ({height * width} patches)"
        )
    patch_tokens = tokens[:, num_prefix_tokens:]
    return patch_tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def to_channels_first(features: torch.Tensor, layout: str) -> torch.Tensor:
    """A 4-D feature map in ``layout`` "NCHW" or "NHWC" -> (B, C, h, w) (a view where possible)."""
    if features.ndim != 4:
        raise ValueError(
            f"features must have shape (B, C, h, w) or (B, h, w, C), got {tuple(features.shape)}"
        )
    if layout == "NHWC":
        return features.permute(0, 3, 1, 2)
    if layout != "NCHW":
        raise ValueError(f"layout must be NCHW or NHWC for a 4-D feature map, got {layout!r}")
    return features


def class_weights(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The classifier's weight vector of each image's target: (B, C) float32.

    ``weight`` (K, C), the classifier's (K classes, C input features). ``target`` (B,) integer labels:
    the label's row; or (B, K) soft targets: the target-weighted sum of rows (the CAM of a soft label is
    the same mixture of the classes' CAMs, since a CAM is linear in the row). Integer labels are
    gathered on the device (no host read); they must lie in [0, K) (the caller checks them).
    """
    weight = weight.float()
    if target.is_floating_point():
        return target.float() @ weight
    return weight.index_select(0, target.long())


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class activation maps (Zhou et al., CVPR 2016) of each image's target, (B, h, w) float32, signed.

    ``features`` (B, C, h, w), the last feature map, before the global average pool; ``weight`` (K, C)
    the linear classifier that follows the pool; ``target`` (B,) labels or (B, K) soft targets (see
    :func:`class_weights`). ``cam[b, i, j] = sum_c w[y_b, c] * features[b, c, i, j]``: for a network whose
    head is average pool then linear layer, the mean of the map plus the bias is the target's logit. The
    map is computed in float32 whatever the features' dtype (autocast).

    Raises:
        ValueError: the channel count of ``features`` differs from the classifier's input size.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape (B, C, h, w), got {tuple(features.shape)}")
    if weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"the classifier takes {weight.shape[-1]} features but the feature map has {features.shape[1]} "
            f"channels (classifier weight {tuple(weight.shape)}, features {tuple(features.shape)})"
        )
    rows = class_weights(weight, target)
    return torch.einsum("bc,bchw->bhw", rows, features.float())


def feature_norm_maps(features: torch.Tensor) -> torch.Tensor:
    """The L2 norm over channels of a (B, C, h, w) feature map: (B, h, w) float32, non-negative.

    Class-agnostic: where the network's last features are strong, whatever the label (the activation
    map of Saliency Grafting, Park et al., AAAI 2022, before its temperature)."""
    if features.ndim != 4:
        raise ValueError(f"features must have shape (B, C, h, w), got {tuple(features.shape)}")
    return torch.linalg.vector_norm(features.float(), dim=1)


def shift_to_zero(maps: torch.Tensor) -> torch.Tensor:
    """Each (B, h, w) map minus its own minimum: non-negative, its smallest value 0 (SnapMix's normalisation
    of a CAM, Huang et al., AAAI 2021). A signed CAM keeps its whole spatial ranking, also when every value
    is negative (a label the network does not predict yet), where clipping at zero would leave no map."""
    return maps - maps.flatten(1).amin(1).view(-1, 1, 1)


def finish_maps(
    maps: torch.Tensor, size: tuple[int, int], blur_kernel: int = 5, blur_sigma: float = 1.0
) -> torch.Tensor:
    """Low-resolution non-negative maps (B, h, w) -> saliency maps (B, H, W) float32 as the paper's are:
    bilinear upsampling to ``size = (H, W)`` (of non-negative values: stays non-negative), then the same
    Gaussian blur as the gradient maps (:func:`~timm_sage.core.saliency.blur_maps`). SAGE then normalises
    each map to its prior share, as for any source."""
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, h, w), got {tuple(maps.shape)}")
    maps = maps.float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return blur_maps(maps, blur_kernel, blur_sigma)


def forward_only_maps(
    features: torch.Tensor,
    source: str,
    size: tuple[int, int],
    *,
    weight: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    blur_kernel: int = 5,
    blur_sigma: float = 1.0,
) -> torch.Tensor:
    """Saliency (B, H, W) float32 of ``source`` "cam" or "features" from a (B, C, h, w) feature map.

    "cam": :func:`class_activation_maps` with ``weight`` (K, C) and ``target``, shifted to zero
    (:func:`shift_to_zero`); "features": :func:`feature_norm_maps`. Then :func:`finish_maps` to ``size``.
    """
    if source == "cam":
        if weight is None or target is None:
            raise ValueError("source 'cam' needs the classifier weight and the target")
        low = shift_to_zero(class_activation_maps(features, weight, target))
    elif source == "features":
        low = feature_norm_maps(features)
    else:
        raise ValueError(f"source must be 'cam' or 'features', got {source!r}")
    return finish_maps(low, size, blur_kernel, blur_sigma)
