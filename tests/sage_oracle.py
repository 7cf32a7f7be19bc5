"""A slow, obvious re-statement of docs/algorithm.md sections 2 to 4: one image, one candidate at a time.

Written independently of timm_sage.core.search (no unfold, no gather, no chunking) to check the fast path.
"""

from __future__ import annotations

import torch


def zero_padded_shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move content at (i, j) to (i + dy, j + dx) of a (..., H, W) tensor; uncovered pixels are zero."""
    height, width = image.shape[-2:]
    out = torch.zeros_like(image)
    for i in range(height):
        src_i = i - dy
        if not 0 <= src_i < height:
            continue
        for j in range(width):
            src_j = j - dx
            if 0 <= src_j < width:
                out[..., i, j] = image[..., src_i, src_j]
    return out


def oracle_sage(x, saliency, perm, prior, translations):
    """Reference semantics in float64. Returns images (B,C,H,W), lam (B,), translation (B,2), scores (B,K)."""
    batch = x.shape[0]
    x = x.double()
    images, lams, chosen, all_scores = [], [], [], []
    for b in range(batch):
        alpha = float(prior[b]) if isinstance(prior, torch.Tensor) else float(prior)
        s_anchor = saliency[b].double()
        s_partner = saliency[int(perm[b])].double()
        if s_anchor.sum() == 0:
            s_anchor = torch.ones_like(s_anchor)
        if s_partner.sum() == 0:
            s_partner = torch.ones_like(s_partner)
        s0 = alpha * s_anchor / s_anchor.sum()
        s1 = (1 - alpha) * s_partner / s_partner.sum()
        best_score, best_k, scores = None, None, []
        for k in range(translations.shape[0]):
            dy, dx = int(translations[k, 0]), int(translations[k, 1])
            t = zero_padded_shift(s1, dy, dx)
            mask = s0 / torch.clamp(s0 + t, min=1e-16)
            score = float((s0 * mask + t * (1 - mask)).sum())
            scores.append(score)
            if best_score is None or score > best_score:
                best_score, best_k = score, k
        dy, dx = int(translations[best_k, 0]), int(translations[best_k, 1])
        t = zero_padded_shift(s1, dy, dx)
        mask = s0 / torch.clamp(s0 + t, min=1e-16)
        partner_image = zero_padded_shift(x[int(perm[b])], dy, dx)
        images.append(mask * x[b] + (1 - mask) * partner_image)
        lams.append(mask.mean())
        chosen.append((dy, dx))
        all_scores.append(scores)
    return (
        torch.stack(images),
        torch.stack(lams),
        torch.tensor(chosen, dtype=torch.long),
        torch.tensor(all_scores, dtype=torch.float64),
    )
