"""The authors' released checkpoints (METHOD section 10): read them, and write ours in their layout.

Their training script saves one state dict, ``pytorch_lora_weights.bin``, per anomaly type:

- UNet, every LoRA attention processor ``unet.<processor>.``: ``to_{q,k,v,out}_lora.{0,1}.{down,up}.weight``
  (branch 0 global, 1 part) and SAIM ``temporal_{n,i,q,k,v,o}.{weight,bias}``.
- With BCM, every processor of their code also owns ``temporal_condition_mlp.{0,1}.{weight,bias}`` and a gate
  ``temporal_a`` (shape [1], initialised 0), but only attn1's are used: a reference-only processor wraps
  attn1's processor as ``chained_proc``, so attn1's keys (LoRA, SAIM, MLP, gate) all sit under
  ``unet.<processor>.chained_proc.``; attn2's keys stay at ``unet.<processor>.``, its MLP and gate never
  receive a gradient and keep their initial values.
- Text encoder: ``text_encoder.text_model.encoder.layers.<i>.self_attn.to_{q,k,v,out}_lora.{down,up}.weight``.

Importing drops the unused attn2 BCM tensors (warning if such a gate is not 0); exporting writes every key
their loader expects, attn2's unused MLP and gate at their initial values (PyTorch's default initialisation,
seeded, and 0), since their ``load_state_dict`` is strict.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import InputError
from ..io import atomic_path
from ..weights import read_state_dict
from .dual_unet import AdapterConfig

# File names their scripts write and read (diffusers' LoRA weight names); a directory is searched for them,
# safetensors first as diffusers does.
OFFICIAL_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
BCM_MLP_HIDDEN = 320  # their temporal_condition_mlp: Linear(C, 320) then Linear(320, C)

_SAIM_NAMES = {"n": "norm", "i": "proj_in", "q": "to_q", "k": "to_k", "v": "to_v", "o": "proj_out"}
_UNET_KEY = re.compile(r"^unet\.(?P<proc>.+?\.processor)\.(?P<chained>chained_proc\.)?(?P<rest>.+)$")
_TEXT_KEY = re.compile(
    r"^text_encoder\.(?P<layer>text_model\.encoder\.layers\.\d+\.self_attn)\.to_(?P<proj>q|k|v|out)_lora\."
    r"(?P<ud>down|up)\.weight$"
)
_BCM_REST = re.compile(r"temporal_condition_mlp\.[01]\.(?:weight|bias)|temporal_a")


def find_official_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file itself, or the ``pytorch_lora_weights`` file inside a checkpoint directory."""
    path = Path(path)
    if path.is_dir():
        for name in OFFICIAL_WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path}: no {' or '.join(OFFICIAL_WEIGHT_NAMES)} in this checkpoint directory")
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    return path


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or a torch-saved state dict (tensors only: ``weights_only=True``); a
    checkpoint directory is searched for ``pytorch_lora_weights.{safetensors,bin}``.

    Reading goes through :func:`dualanodiff.weights.read_state_dict`, whose error is one line naming the
    file: torch's own text for a refused pickle runs to five lines and advises ``weights_only=False``,
    which would run the code of an untrusted file.
    """
    return read_state_dict(
        find_official_checkpoint(path), "the authors' LoRA state dict (pytorch_lora_weights)"
    )


def _unused_bcm_keys(official: dict[str, torch.Tensor]) -> set[str]:
    """BCM tensors of processors their code does not wrap (attn2): never used, never trained.

    A processor is wrapped by the reference-only processor exactly when its keys sit under ``chained_proc.``;
    only wrapped processors receive the background features, so only their MLP and gate mean anything.
    """
    matches = {k: m for k in official if (m := _UNET_KEY.match(k))}
    wrapped = {m["proc"] for m in matches.values() if m["chained"]}
    unused = {k for k, m in matches.items() if m["proc"] not in wrapped and _BCM_REST.fullmatch(m["rest"])}
    trained = sorted(
        k for k in unused if k.endswith("temporal_a") and bool(official[k].float().abs().max() > 0)
    )
    if trained:
        warnings.warn(
            f"the official checkpoint has {len(trained)} BCM gate(s) outside the wrapped attn1 processors that "
            f"are not 0 (e.g. {trained[0]} = {official[trained[0]].flatten()[0].item():.4g}); the authors' code "
            "never uses them, and neither does this import: they are dropped",
            UserWarning,
            stacklevel=3,
        )
    return unused


def convert_official_state_dict(
    official: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], AdapterConfig]:
    """Map the authors' key names to ours, and infer the adapter config (rank, SAIM, BCM) from the tensors."""
    unused = _unused_bcm_keys(official)
    # Per-branch LoRA tensors are stacked into (2, ...) parameters: collect them by branch first.
    lora_parts: dict[str, dict[int, torch.Tensor]] = {}
    converted: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if key in unused:
            continue
        if m := _TEXT_KEY.match(key):
            lora = "lora_A" if m["ud"] == "down" else "lora_B"
            converted[f"text_encoder.{m['layer']}.{m['proj']}_proj.{lora}.weight"] = value
            continue
        m = _UNET_KEY.match(key)
        if m is None:
            raise InputError(f"unrecognised key in the official checkpoint: {key}")
        proc, rest = m["proc"], m["rest"]
        if lm := re.fullmatch(r"to_(q|k|v|out)_lora\.([01])\.(down|up)\.weight", rest):
            lora_parts.setdefault(f"unet.{proc}.to_{lm[1]}_lora.{lm[3]}", {})[int(lm[2])] = value
        elif sm := re.fullmatch(r"temporal_([niqkvo])\.(weight|bias)", rest):
            converted[f"unet.{proc}.saim.{_SAIM_NAMES[sm[1]]}.{sm[2]}"] = value
        elif bm := re.fullmatch(r"temporal_condition_mlp\.([01])\.(weight|bias)", rest):
            converted[f"unet.{proc}.bcm.mlp.{bm[1]}.{bm[2]}"] = value
        elif rest == "temporal_a":
            converted[f"unet.{proc}.bcm.alpha"] = value.reshape(1)
        else:
            raise InputError(f"unrecognised key in the official checkpoint: {key}")
    for name, branches in lora_parts.items():
        if set(branches) != {0, 1}:
            raise InputError(f"the official checkpoint has only branch {sorted(branches)} for {name}")
        converted[name] = torch.stack([branches[0], branches[1]])
    downs = [v for k, v in converted.items() if k.endswith("_lora.down")]
    if not downs:
        raise InputError("the official checkpoint holds no UNet LoRA tensors (to_q_lora...)")
    text_downs = [v for k, v in converted.items() if k.startswith("text_encoder.") and "lora_A" in k]
    config = AdapterConfig(
        rank=downs[0].shape[1],
        saim=any(".saim." in k for k in converted),
        bcm=any(k.endswith("bcm.alpha") for k in converted),
        text_encoder_rank=text_downs[0].shape[0] if text_downs else 0,
        background_latent_scaling="official",
    )
    return converted, config


def _initial_modules(channels: int, seed: int) -> dict[str, torch.Tensor]:
    """Their processor's modules that a model of ours may lack, at their initial values: PyTorch's default
    initialisation (seeded, so an export is reproducible) and a gate of 0. SAIM's output projection is 0,
    which makes SAIM the identity (only used when exporting adapters trained without SAIM)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Linear(channels, BCM_MLP_HIDDEN), nn.Linear(BCM_MLP_HIDDEN, channels))
        saim = {k: nn.Linear(channels, channels) for k in "iqkv"}
    out = {f"temporal_condition_mlp.{k}": v for k, v in mlp.state_dict().items()}
    out["temporal_a"] = torch.zeros(1)
    for k, layer in saim.items():
        out.update({f"temporal_{k}.{p}": v for p, v in layer.state_dict().items()})
    out.update(
        {
            "temporal_n.weight": torch.ones(channels),
            "temporal_n.bias": torch.zeros(channels),
            "temporal_o.weight": torch.zeros(channels, channels),
            "temporal_o.bias": torch.zeros(channels),
        }
    )
    return out


def export_official_state_dict(
    state: dict[str, torch.Tensor], unet_lora_scale: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Our adapter state (as `adapter_state_dict` gives it) in the authors' layout, every key their strict
    loader expects. ``unet_lora_scale`` (alpha / rank) is folded into the up-projections, since their LoRA
    layers have scale 1; ``seed`` draws the initial values of the modules our model lacks (see module doc)."""
    by_proc: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("text_encoder."):
            m = re.fullmatch(r"text_encoder\.(.+self_attn)\.(q|k|v|out)_proj\.lora_(A|B)\.weight", key)
            if m is None:
                raise InputError(f"cannot express {key} in the official layout")
            out[f"text_encoder.{m[1]}.to_{m[2]}_lora.{'down' if m[3] == 'A' else 'up'}.weight"] = value
            continue
        proc, sep, rest = key.removeprefix("unet.").partition(".processor.")
        if not sep:
            raise InputError(f"cannot express {key} in the official layout")
        by_proc.setdefault(f"{proc}.processor", {})[rest] = value
    bcm = any(k.startswith("bcm.") for params in by_proc.values() for k in params)
    for index, (proc, params) in enumerate(by_proc.items()):
        # With BCM, their reference-only processor wraps exactly the layers that fuse a background (attn1).
        wrapped = bcm and any(k.startswith("bcm.") for k in params)
        prefix = f"unet.{proc}.chained_proc." if wrapped else f"unet.{proc}."
        theirs = _their_processor_tensors(proc, params, unet_lora_scale)
        if bcm or "temporal_o.weight" not in theirs:
            channels = params["to_q_lora.up"].shape[1]
            initial = _initial_modules(channels, seed + index)
            missing = {
                k: v for k, v in initial.items() if k not in theirs and (bcm or not _BCM_REST.fullmatch(k))
            }
            theirs = {**missing, **theirs}
        out.update({prefix + k: v for k, v in theirs.items()})
    return out


def _their_processor_tensors(
    proc: str, params: dict[str, torch.Tensor], unet_lora_scale: float
) -> dict[str, torch.Tensor]:
    """One of our processors' tensors under their names (no prefix)."""
    saim_names = {v: k for k, v in _SAIM_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for rest, value in params.items():
        if m := re.fullmatch(r"to_(q|k|v|out)_lora\.(down|up)", rest):
            for branch in (0, 1):
                v = value[branch] * unet_lora_scale if m[2] == "up" else value[branch]
                out[f"to_{m[1]}_lora.{branch}.{m[2]}.weight"] = v
        elif m := re.fullmatch(r"saim\.(\w+)\.(weight|bias)", rest):
            out[f"temporal_{saim_names[m[1]]}.{m[2]}"] = value
        elif m := re.fullmatch(r"bcm\.mlp\.([01])\.(weight|bias)", rest):
            out[f"temporal_condition_mlp.{m[1]}.{m[2]}"] = value
        elif rest == "bcm.alpha":
            out["temporal_a"] = value.reshape(1)
        else:
            raise InputError(f"cannot express unet.{proc}.{rest} in the official layout")
    return out


def save_official_checkpoint(
    state: dict[str, torch.Tensor],
    out_dir: str | os.PathLike,
    unet_lora_scale: float = 1.0,
    safe_serialization: bool = False,
) -> Path:
    """Write ``out_dir/pytorch_lora_weights.bin`` (or ``.safetensors``) in the authors' layout, atomically:
    the directory their inference script passes to ``pipe.load_lora_weights``."""
    official = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in export_official_state_dict(state, unet_lora_scale).items()
    }
    name = OFFICIAL_WEIGHT_NAMES[0] if safe_serialization else OFFICIAL_WEIGHT_NAMES[1]
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        if safe_serialization:
            save_file(official, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(official, tmp)
    return path
