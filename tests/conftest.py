"""Shared fixtures: a tiny SD-structured base, built once per session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A complete diffusers folder written by `make-tiny-base` (64 px, seed 0)."""
    from dualanodiff.model.base import build_base, save_base

    out = tmp_path_factory.mktemp("tiny_base")
    save_base(build_base("tiny", seed=0, resolution=64), out)
    return out


@pytest.fixture
def tiny_components(tiny_base_dir):
    """Freshly loaded (so tests may mutate them) base components."""
    from dualanodiff.model.base import load_base

    return load_base(tiny_base_dir)
