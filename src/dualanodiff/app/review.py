"""The Generate page's work on a generated folder: keep or reject a pair by hand, and package the folder
(or its anomalib export) as a zip to download.

A verdict by hand is a mask update like ``dualanodiff masks`` makes (`GeneratedWriter.update`: the pair's files
move between ``image/`` and ``rejected/`` and its manifest record says why, as one step), under the folder's
output lock, so it is refused while ``generate`` still writes the folder.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from ..data.generated import GeneratedWriter, PairFiles, read_generated_config
from ..data.images import load_mask
from ..errors import InputError
from ..io import atomic_path
from ..locking import STATE_DIR, output_lock

REJECTED_BY_HAND = "rejected by hand"


def set_verdict(folder: str | os.PathLike, name: str, keep: bool) -> dict[str, Any]:
    """Keep (``keep``) or reject pair ``name`` of a generated folder by hand; returns its new record.

    A pair whose mask is empty cannot be kept: nothing would mark its defect.
    """
    folder = Path(folder)
    with output_lock(folder, "dualanodiff app (keep/reject by hand)"):
        writer = GeneratedWriter(folder, read_generated_config(folder), resume_ignore=())
        record = writer.records.get(name)
        if record is None:
            raise InputError(f"{folder}: no pair named {name!r} in its manifest")
        mask_path = PairFiles(folder).find("mask", name, bool(record.get("kept", True)))
        if mask_path is None:
            raise InputError(f"{folder}: pair {name} has no mask file")
        mask = load_mask(mask_path)
        if keep and not mask.any():
            raise InputError(f"pair {name}: its mask is empty, so nothing marks a defect; it cannot be kept")
        return writer.update(
            name,
            mask,
            kept=keep,
            reject_reason=None if keep else REJECTED_BY_HAND,
            verdict_by_hand="kept" if keep else "rejected",
        )


def zip_folder(folder: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write ``folder`` as a zip whose entries start with the folder's name, leaving out the writer's lock
    folder and hidden temporaries; PNGs are stored as they are (already compressed), the rest deflated.
    Holds the folder's output lock, so no writer changes it while it is read."""
    folder, target = Path(folder), Path(target)
    if not folder.is_dir():
        raise InputError(f"{folder}: nothing to download yet")
    with output_lock(folder, "dualanodiff app (zip)"), atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if (
                    not path.is_file()
                    or rel.parts[0] == STATE_DIR
                    or any(p.startswith(".") for p in rel.parts)
                ):
                    continue
                method = zipfile.ZIP_STORED if path.suffix.lower() == ".png" else zipfile.ZIP_DEFLATED
                archive.write(path, str(Path(folder.name) / rel), compress_type=method)
    return target
