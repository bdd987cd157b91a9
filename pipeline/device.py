"""The torch device for a device setting (`settings.model.device` for training and scoring,
`settings.model.embed_device` for the text encoder)."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else ("cpu", "cuda", "cuda:1") as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
