"""Read a weights file the user gives without running code from it.

``.safetensors`` files hold tensors only; anything else is read with ``torch.load(weights_only=True)``,
which refuses pickles that would construct arbitrary objects (a plain ``torch.load`` of a hostile file
runs its code). Every failure is an :class:`InputError` naming the file and what it should have been.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import InputError


def _load_error(err: Exception) -> str:
    """What went wrong, in one line. torch's refusal of a pickle runs to several lines and advises
    ``weights_only=False``, which would run whatever code an untrusted file holds: only its finding is kept."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"it holds a Python object ({found.group(1)}) besides tensors, and is not unpickled: that could run "
            "code from the file"
        )
    if text.startswith("Weights only load failed"):
        return "not a file of tensors written by torch.save or safetensors"
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from ``path``; ``what`` names the expected content in errors.

    A ``{"state_dict": {...}}`` wrapper is unwrapped and ``nn.DataParallel``'s ``module.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                # torch warns of any pickle protocol but 2 ("Detected pickle protocol 4 ..."): a second line
                # before ours that tells the user nothing (what it fails to read, our error names).
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors and torch errors all mean "not a usable file"
        raise InputError(f"{path}: cannot read {what} ({_load_error(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not {what} (expected a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
