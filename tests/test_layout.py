"""The generated-folder layout (issue 11): kept pairs in image/part/mask, rejected ones under rejected/, the
manifest listing every pair; written, resumed and changed by `masks` without a reader ever seeing a pair
out of step with its record (issue 12), a corrupt manifest line named, stale temporaries removed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from anomalib_folder import folder_samples
from PIL import Image

import dualanodiff.data.generated as generated_mod
from dualanodiff.cli import main as cli
from dualanodiff.data.generated import GeneratedWriter, manifest_records, pair_path, read_generated
from dualanodiff.data.images import load_mask
from dualanodiff.errors import InputError
from dualanodiff.io import read_jsonl
from dualanodiff.locking import STATE_DIR, output_lock
from dualanodiff.masks import grey_mask, make_masks_for_folder

SIZE = 24


def _pair(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, part, mask) of pair i: a dark square of side 2 + 3 * (i % 5) on a mid-grey part image."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    part = np.full((SIZE, SIZE, 3), 128, np.uint8)
    side = 2 + 3 * (i % 5)
    part[3 : 3 + side, 4 : 4 + side] = 20
    return image, part, grey_mask(part)


def _write(out: Path, n: int, reject=lambda i: i % 3 == 1) -> dict:
    """n pairs through the writer, as `generate` and the baselines write them; every third one rejected."""
    with output_lock(out, "test"):
        writer = GeneratedWriter(out, {"seed": 0, "num_pairs": n})
        for i in writer.pending(n):
            image, part, mask = _pair(i)
            kept = not reject(i)
            writer.write(i, image, mask, part=part, kept=kept, reject_reason=None if kept else "judged bad")
        return writer.summary(n)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of a folder but the writer's bookkeeping (locks), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and STATE_DIR not in p.relative_to(folder).parts
    }


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []


def _normals(root: Path) -> str:
    for i in range(2):
        (root / "normals").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pair(100 + i)[0]).save(root / "normals" / f"{i}.png")
    return "normals"


def test_rejected_pairs_live_under_rejected_and_every_reader_agrees(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    summary = _write(out, 6)
    assert (summary["kept"], summary["rejected"]) == (4, 2)
    kept, rejected = ["00000", "00002", "00003", "00005"], ["00001", "00004"]
    for kind in ("image", "part", "mask"):
        assert _stems(out / kind) == kept and _stems(out / "rejected" / kind) == rejected
    records = read_jsonl(out / "manifest.jsonl")
    assert [r["name"] for r in records] == [f"{i:05d}" for i in range(6)]  # the manifest lists every pair
    assert {r["name"]: r["reject_reason"] for r in records if not r["kept"]} == {
        n: "judged bad" for n in rejected
    }

    assert [p.name for p in read_generated(out)] == kept
    everything = read_generated(out, include_rejected=True)
    assert [p.name for p in everything] == [f"{i:05d}" for i in range(6)]
    for p in everything:
        assert p.image == pair_path(out, "image", p.name, p.kept) and p.part == pair_path(
            out, "part", p.name, p.kept
        )
        assert np.array_equal(load_mask(p.mask), _pair(int(p.name))[2])

    # anomalib's Folder pointed at image/ and mask/ gets exactly the kept pairs, each with its own mask.
    seen = folder_samples(tmp_path, _normals(tmp_path), abnormal_dir="gen/image", mask_dir="gen/mask")
    abnormal = [(Path(i).stem, Path(m).stem) for i, m in seen["test"]]
    assert abnormal == [(n, n) for n in kept]


def test_a_resumed_run_with_rejected_pairs_equals_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _write(full, 7)
    real_append, calls = generated_mod.append_jsonl, []

    def crashing_append(path, record):
        calls.append(record["name"])
        if len(calls) == 5:  # pair 4 (a rejected one): files written, record not
            raise KeyboardInterrupt
        real_append(path, record)

    monkeypatch.setattr(generated_mod, "append_jsonl", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        _write(resumed, 7)
    monkeypatch.setattr(generated_mod, "append_jsonl", real_append)
    assert (resumed / "rejected" / "image" / "00004.png").exists() and len(
        read_jsonl(resumed / "manifest.jsonl")
    ) == 4
    # What a kill -9 inside the write window leaves: temporaries, in kept and rejected places, and a torn line.
    stale = [resumed / "part" / ".00003.png.k1ll3d.tmp", resumed / "rejected" / "mask" / ".00004.png.x_9.tmp"]
    stale.append(resumed / ".manifest.jsonl.abc.tmp")
    for path in stale:
        path.write_bytes(b"half")
    with (resumed / "manifest.jsonl").open("a") as f:
        f.write('{"name": "00004", "ind')

    summary = _write(resumed, 7)
    assert (summary["written"], summary["complete"], summary["kept"], summary["rejected"]) == (3, 7, 5, 2)
    assert not any(p.exists() for p in stale)
    assert _tree(resumed) == _tree(full)  # byte-identical files, manifest included


def test_masks_moves_pairs_both_ways_and_records_its_settings(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _write(out, 6, reject=lambda i: False)  # all kept so far; masks decides again from the part images
    first = make_masks_for_folder(out, max_area_fraction=0.05, show_progress=False)
    # areas (side 2 + 3k)^2 / 576: 0.7%, 4.3%, 11%, 21%, 34%, 0.7% -> sides above 0.05 are rejected
    assert (first["pairs"], first["updated"], first["kept"], first["rejected_too_large"]) == (6, 6, 3, 3)
    assert _stems(out / "image") == ["00000", "00001", "00005"]
    assert (
        _stems(out / "rejected" / "image") == _stems(out / "rejected" / "mask") == ["00002", "00003", "00004"]
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["max_mask_area"], config["mask_method"], config["mask_threshold"]) == (0.05, "auto", None)

    again = make_masks_for_folder(out, max_area_fraction=0.05, show_progress=False)
    assert again["updated"] == 0 and again["kept"] == 3  # same settings: every pair already has its mask

    # The example: a threshold above every grey distance empties the masks; config.json follows.
    assert cli(["masks", "--generated", str(out), "--threshold", "200", "--max-area", "1.0"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["mask_threshold"], config["max_mask_area"], config["seed"]) == (200.0, 1.0, 0)
    records = manifest_records(out)
    assert all(r["reject_reason"] == "empty mask" and r["mask_area"] == 0.0 for r in records.values())
    assert all(r["mask_settings"]["threshold"] == 200.0 for r in records.values())
    assert _stems(out / "image") == [] and len(_stems(out / "rejected" / "image")) == 6

    back = make_masks_for_folder(out, max_area_fraction=1.0, show_progress=False)
    assert back["kept"] == 6 and _stems(out / "image") == _stems(out / "mask") == [
        f"{i:05d}" for i in range(6)
    ]
    assert all(not any((out / "rejected" / k).glob("*.png")) for k in ("image", "part", "mask"))
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6  # compacted: one line per pair
    for p in read_generated(out):
        assert np.array_equal(load_mask(p.mask), _pair(int(p.name))[2]) and p.record["kept"]


class Killed(BaseException):
    """Stands for a kill: nothing catches it."""


def _assert_in_step(out: Path) -> None:
    """What any reader sees is consistent: each pair's mask is the one its record describes, and image/
    holds no pair whose record says rejected."""
    records = manifest_records(out)
    for p in read_generated(out, include_rejected=True):
        # the same mean of the same mask (JSON keeps floats exactly): exact
        assert load_mask(p.mask).mean() == p.record["mask_area"], p.name
    kept = {n for n, r in records.items() if r.get("kept", True)}
    assert set(_stems(out / "image")) <= kept


@pytest.mark.slow
def test_an_interrupted_masks_never_leaves_masks_and_manifest_out_of_step(
    tmp_path: Path, monkeypatch
) -> None:
    pristine = tmp_path / "pristine"
    _write(pristine, 6, reject=lambda i: i in (0, 5))  # 0 and 5 enter image/, 2-4 leave it, 1 stays
    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    make_masks_for_folder(reference, max_area_fraction=0.05, show_progress=False)

    steps = ("append_jsonl", "save_image_atomic", "write_json_atomic")
    originals = {name: getattr(generated_mod, name) for name in steps}
    real_replace = generated_mod.os.replace
    crash_at = 0
    while True:  # crash at the 1st file operation of `masks`, then at the 2nd, ... until one run gets through
        crash_at += 1
        out = tmp_path / f"crash{crash_at}"
        shutil.copytree(pristine, out)
        count = [0]

        def counted(fn, count=count, crash_at=crash_at):
            def wrapper(*args, **kwargs):
                count[0] += 1
                if count[0] == crash_at:
                    raise Killed
                return fn(*args, **kwargs)

            return wrapper

        for name, fn in originals.items():
            monkeypatch.setattr(generated_mod, name, counted(fn))
        monkeypatch.setattr(generated_mod.os, "replace", counted(real_replace))
        try:
            make_masks_for_folder(out, max_area_fraction=0.05, show_progress=False)
            finished = True
        except Killed:
            finished = False
        finally:
            for name, fn in originals.items():
                monkeypatch.setattr(generated_mod, name, fn)
            monkeypatch.setattr(generated_mod.os, "replace", real_replace)
        _assert_in_step(out)
        make_masks_for_folder(out, max_area_fraction=0.05, show_progress=False)  # the rerun completes it
        assert _tree(out) == _tree(reference), f"crash at file operation {crash_at}"
        assert not (out / STATE_DIR / "pending").is_dir() or not any((out / STATE_DIR / "pending").iterdir())
        if finished:
            break
    assert crash_at > 20  # every step of every pair's update was interrupted once


def test_a_folder_written_before_rejected_existed_is_read_right_and_put_in_order(tmp_path: Path) -> None:
    out = tmp_path / "old"
    for i in range(4):  # the old layout: rejected pairs beside the kept ones
        image, part, mask = _pair(i)
        for kind, arr in (("image", image), ("part", part), ("mask", mask.astype(np.uint8) * 255)):
            (out / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(out / kind / f"{i:05d}.png")
    lines = [
        {"name": f"{i:05d}", "index": i, "kept": i != 2, "mask_area": 0.1, "has_part": True} for i in range(4)
    ]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [p.name for p in read_generated(out)] == ["00000", "00001", "00003"]
    assert read_generated(out, include_rejected=True)[2].image == out / "image" / "00002.png"
    with output_lock(out, "test"):
        GeneratedWriter(out, {"seed": 0})  # any writer that opens the folder moves the rejected pair out
    assert _stems(out / "image") == _stems(out / "mask") == ["00000", "00001", "00003"]
    assert _stems(out / "rejected" / "part") == ["00002"]
    assert read_generated(out, include_rejected=True)[2].mask == out / "rejected" / "mask" / "00002.png"


def test_a_shard_cleans_only_its_own_temporaries(tmp_path: Path) -> None:
    from dualanodiff.sharding import Shard

    out = tmp_path / "gen"
    _write(out, 2)
    mine, theirs = out / "image" / ".00002.png.aaa.tmp", out / "image" / ".00003.png.bbb.tmp"
    shared = out / ".manifest.jsonl.ccc.tmp"
    for path in (mine, theirs, shared):
        path.write_bytes(b"x")
    with output_lock(out, "test", shard=Shard(0, 2)):
        GeneratedWriter(out, {"seed": 0, "num_pairs": 2})
    assert not mine.exists() and theirs.exists() and shared.exists()  # another shard may be writing those


def test_a_corrupt_manifest_line_is_named_and_a_torn_last_line_repaired(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    _write(out, 4)
    lines = (out / "manifest.jsonl").read_text().splitlines(True)
    good = "".join(lines)

    (out / "manifest.jsonl").write_text(good + '{"name": "00009", "ind')  # torn last line: a killed writer
    assert [p.name for p in read_generated(out, include_rejected=True)] == [f"{i:05d}" for i in range(4)]
    _write(out, 4)  # the next writer cuts it off
    assert (out / "manifest.jsonl").read_text() == good
    (out / "manifest.jsonl").write_text(good.rstrip("\n"))  # a whole last record without its newline counts
    assert len(read_generated(out, include_rejected=True)) == 4
    _write(out, 4)  # and is completed, not cut
    assert (out / "manifest.jsonl").read_text() == good

    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # the middle: not a torn write, a damaged file
    (out / "manifest.jsonl").write_text("".join(lines))
    with pytest.raises(InputError, match=r"manifest\.jsonl, line 2: not a JSON record"):
        read_generated(out)
    with pytest.raises(InputError, match=r"manifest\.jsonl, line 2"):
        _write(out, 4)  # a writer refuses it too rather than dropping the pair
    assert cli(["masks", "--generated", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.jsonl, line 2: not a JSON record" in err[0]
    (out / "manifest.jsonl").write_text(good.replace('"name": "00001"', '"name": "../x"'))
    with pytest.raises(InputError, match=r"line 2: not a pair record"):
        read_generated(out)


def test_a_corrupt_config_json_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    _write(out, 3)
    (out / "config.json").write_text('{"seed": 0,')
    normals = _normals(tmp_path)
    for args in (
        ["masks", "--generated", str(out)],
        [
            "export",
            "anomalib",
            "--generated",
            str(out),
            "--normal",
            str(tmp_path / normals),
            "--out",
            str(tmp_path / "x"),
        ],
    ):
        assert cli(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out / 'config.json'}: not valid JSON" in err[0], err
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_appends_from_several_processes_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    script = (
        "import sys; from dualanodiff.io import append_jsonl\n"
        "for i in range(300): append_jsonl(sys.argv[1], {'writer': sys.argv[2], 'i': i, 'pad': 'x' * 5000})"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), w]) for w in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    records = read_jsonl(path)
    assert sorted((r["writer"], r["i"]) for r in records) == [(w, i) for w in "ab" for i in range(300)]


def test_temporaries_of_files_and_folders_are_removed_and_nothing_else(tmp_path: Path) -> None:
    import tempfile

    from dualanodiff.io import remove_temporaries, temporary_target

    ckpt = Path(tempfile.mkdtemp(prefix=".step-00000100.", suffix=".tmp", dir=tmp_path))  # a checkpoint's
    (ckpt / "adapters.safetensors").write_bytes(b"half")
    part = tmp_path / ".00003.png.k1ll3d.tmp"
    part.write_bytes(b"half")
    keep = [tmp_path / STATE_DIR, tmp_path / ".hidden", tmp_path / "00003.png", tmp_path / "notes.tmp"]
    keep[0].mkdir()
    for path in keep[1:]:
        path.write_bytes(b"x")
    assert temporary_target(part.name) == "00003.png" and temporary_target(ckpt.name) == "step-00000100"
    assert sorted(remove_temporaries(tmp_path)) == sorted([ckpt, part])
    assert sorted(tmp_path.iterdir()) == sorted(keep)
