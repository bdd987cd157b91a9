"""The frozen text embeddings' space: whitening fitted on a catalog (WhitenRec, Zhang et al. 2024)."""

from __future__ import annotations

import torch
from torch import Tensor


def fit_whitening(vectors: Tensor, shrinkage: float = 0.1) -> tuple[Tensor, Tensor]:
    """ZCA whitening of (N, T) vectors, shrunk towards the identity for a small or degenerate catalog:
    returns (mean (T,), map (T, T)) such that (v - mean) @ map has about isotropic covariance, scaled so that
    the whitened vectors keep the raw ones' mean norm (the adapter's initial scale stays the same)."""
    vectors = vectors.double()
    mean = vectors.mean(0)
    centred = vectors - mean
    cov = centred.T @ centred / max(len(vectors) - 1, 1)  # (T, T)
    eigval, eigvec = torch.linalg.eigh(cov)
    eigval = eigval.clamp(min=0.0)
    eigval = (1.0 - shrinkage) * eigval + shrinkage * eigval.mean().clamp(min=1e-12)
    whiten = eigvec @ torch.diag(eigval.rsqrt()) @ eigvec.T  # (T, T)
    raw_norm = vectors.norm(dim=1).mean()
    white_norm = (centred @ whiten).norm(dim=1).mean().clamp(min=1e-12)
    return mean.float(), (whiten * (raw_norm / white_norm)).float()
