"""One writer per output folder: the OS lock, shards joining it, and the races it closes (issue 12)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualanodiff.errors import InputError
from dualanodiff.locking import STATE_DIR, held_lock, output_lock
from dualanodiff.sharding import Shard

_HOLD = """
import sys
from dualanodiff.locking import output_lock
from dualanodiff.sharding import Shard
shard = Shard.parse(sys.argv[3]) if len(sys.argv) > 3 else None
with output_lock(sys.argv[1], sys.argv[2], shard=shard):
    print("held", flush=True)
    sys.stdin.read()
"""


class Holder:
    """Another process holding ``output_lock(folder, command, shard)`` until closed (or killed)."""

    def __init__(self, folder: Path, command: str, shard: str | None = None) -> None:
        args = [sys.executable, "-c", _HOLD, str(folder), command] + ([shard] if shard else [])
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        line = self.proc.stdout.readline()
        if line.strip() != b"held":
            self.proc.kill()
            raise AssertionError(f"holder did not start: {line!r} {self.proc.stderr.read()!r}")

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = Holder(tmp_path / "out", "generate")
    try:
        with pytest.raises(InputError) as err:
            with output_lock(tmp_path / "out", "masks"):
                pass
        msg = str(err.value)
        assert str(tmp_path / "out") in msg and "`generate`" in msg
        assert f"pid {holder.proc.pid} on {socket.gethostname()}, since 20" in msg  # start time, ISO 8601
        assert "\n" not in msg
        with pytest.raises(InputError, match="`generate`"):  # nor may it join as a shard
            with output_lock(tmp_path / "out", "generate", shard=Shard(1, 2)):
                pass
    finally:
        holder.close()
    with output_lock(tmp_path / "out", "masks") as lock:  # released when the holder finished
        assert lock.exclusive and held_lock(tmp_path / "out") is lock
    assert held_lock(tmp_path / "out") is None


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = Holder(tmp_path, "train")
    holder.kill()
    with output_lock(tmp_path, "train"):
        pass


def test_shards_of_one_split_share_the_folder_and_nothing_else_does(tmp_path: Path) -> None:
    first = Holder(tmp_path, "generate", "0/3")
    try:
        with output_lock(tmp_path, "generate", shard=Shard(2, 3)) as lock:
            assert not lock.exclusive and lock.shard == Shard(2, 3)
        with pytest.raises(
            InputError, match=r"shard 0/3 is already being written by `generate` as shard 0/3"
        ):
            with output_lock(tmp_path, "generate", shard=Shard(0, 3)):
                pass
        with pytest.raises(InputError, match=r"another number of shards.*same N"):
            with output_lock(tmp_path, "generate", shard=Shard(1, 2)):
                pass
        with pytest.raises(InputError, match=r"being written by `generate` as shard 0/3 \(pid"):
            with output_lock(tmp_path, "masks"):
                pass
    finally:
        first.close()
    with output_lock(tmp_path, "masks"):
        pass


def test_lock_is_not_reentrant_and_names_bad_output_paths(tmp_path: Path) -> None:
    with output_lock(tmp_path, "export"):
        with pytest.raises(InputError, match="already being written by this process"):
            with output_lock(tmp_path, "export"):
                pass
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"file\.txt: exists and is not a folder"):
        with output_lock(a_file, "generate"):
            pass
    with pytest.raises(InputError, match=r"file\.txt/sub: cannot write there"):
        with output_lock(a_file / "sub", "generate"):
            pass
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)
        with pytest.raises(InputError, match=r"ro: cannot write there"):
            with output_lock(locked, "generate"):
                pass
    assert a_file.read_text() == "x" and not (tmp_path / STATE_DIR).exists()  # tidied on release


def test_the_last_writer_to_leave_removes_the_lock_files(tmp_path: Path) -> None:
    """A finished folder ships without `.dualanodiff/`; shards leave it until the last of them is done, and a
    writer's own bookkeeping kept there stays."""
    with output_lock(tmp_path / "plain", "export"):
        assert (tmp_path / "plain" / STATE_DIR / "writer.lock").is_file()
    assert list((tmp_path / "plain").iterdir()) == []

    first = Holder(tmp_path / "split", "generate", "0/2")
    with output_lock(tmp_path / "split", "generate", shard=Shard(1, 2)):
        pass
    assert (tmp_path / "split" / STATE_DIR / "shard-00000.lock").is_file()  # shard 0/2 still writes
    with pytest.raises(InputError, match="as shard 0/2"):  # and still holds the folder against others
        with output_lock(tmp_path / "split", "masks"):
            pass
    first.close()
    assert list((tmp_path / "split").iterdir()) == []  # the last shard to leave tidied up
    with output_lock(tmp_path / "split", "masks"):
        (tmp_path / "split" / STATE_DIR / "pending").mkdir()
        (tmp_path / "split" / STATE_DIR / "pending" / "00001.json").write_text("{}")
    assert [p.name for p in (tmp_path / "split" / STATE_DIR).rglob("*")] == ["pending", "00001.json"]


_RACE = """
import os, sys, time
from dualanodiff.errors import InputError
from dualanodiff.locking import output_lock
from dualanodiff.sharding import Shard
folder, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
shard = Shard.parse(me) if "/" in me else None
mine = os.path.join(folder, "plain" if shard is None else "shard-" + me.replace("/", "-"))
held, deadline = 0, time.monotonic() + 120
while held < rounds and time.monotonic() < deadline:
    time.sleep(0.0005)  # outside the lock: room for the others to come in
    try:
        with output_lock(folder, "race", shard=shard):
            os.close(os.open(mine, os.O_CREAT | os.O_EXCL))  # created, then the others looked for
            others = [n for n in os.listdir(folder) if n != ".dualanodiff" and n != os.path.basename(mine)]
            if shard is None and others or shard is not None and "plain" in others:
                print("overlap", others, flush=True)
                sys.exit(1)
            held += 1
            time.sleep(0.0005)
            os.unlink(mine)
    except InputError:
        pass
print(held, flush=True)
"""


def test_removing_lock_files_keeps_one_writer_under_a_race(tmp_path: Path) -> None:
    """Writers and shards that take and leave one folder hundreds of times, removing the lock files as they
    leave: never a plain writer beside another writer, and no lock file left at the end."""
    folder = tmp_path / "race"
    folder.mkdir()
    who = ["plain", "plain", "0/2", "1/2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(folder), w, "100"], stdout=subprocess.PIPE, text=True
        )
        for w in who
    ]
    results = [(p.communicate(timeout=300)[0].strip(), p.returncode) for p in procs]
    assert all(code == 0 for _, code in results), results
    assert all(int(out) == 100 for out, _ in results), results  # each took the folder 100 times
    assert list(folder.iterdir()) == []


# -- the races of issue 12, with the real commands ---------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dualanodiff.cli", *args]


def _finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_masks_and_a_second_generate_are_refused_while_generate_writes(
    tiny_base_dir, tiny_adapters, tmp_path
):
    from dualanodiff.io import read_jsonl

    out = tmp_path / "gen"
    n = 40
    gen = _cli("generate", "--base", str(tiny_base_dir), "--adapters", str(tiny_adapters), "--out", str(out))
    gen += [
        "--num-pairs",
        str(n),
        "--steps",
        "10",
        "--batch-size",
        "1",
        "--max-area",
        "1.0",
        "--device",
        "cpu",
    ]
    first = subprocess.Popen(gen, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "manifest.jsonl").is_file():  # wait until it writes pairs
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Both at once while the first writes: each must be refused, without waiting for it.
        racers = [
            subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for cmd in (_cli("masks", "--generated", str(out)), gen)
        ]
        masks, second = (_finished(r) for r in racers)
        still_running = first.poll() is None
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert still_running, "the first generate finished too soon for the race to be tested"
    for refused, command in ((masks, "masks"), (second, "generate")):
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"dualanodiff {command}: error: {out} is being written by"
        )
        assert f"`generate` (pid {first.pid} on" in lines[0]
    names = [r["name"] for r in read_jsonl(out / "manifest.jsonl")]
    assert sorted(names) == [f"{i:05d}" for i in range(n)]  # every record once: none lost, none duplicated
    assert '"complete": 40' in stdout and '"written": 40' in stdout


# -- every command that writes an output folder takes its lock ---------------------------------------------


@pytest.fixture(scope="module")
def pill_generated(synthetic_pill_root, tmp_path_factory) -> dict[str, Path]:
    """Crop&Paste folders of two types of the synthetic pill category."""
    from dualanodiff.cli import main as cli

    root = tmp_path_factory.mktemp("generated")
    for kind in ("crack", "spot"):
        args = ["baseline", "crop-paste", "--data", str(synthetic_pill_root), "--category", "pill"]
        assert cli([*args, "--anomaly", kind, "--num-pairs", "3", "--out", str(root / kind)]) == 0
    return {kind: root / kind for kind in ("crack", "spot")}


def _writer_commands(data: Path, base: Path, adapters: Path, gen: dict[str, Path], weights, out: Path):
    """(command line, the folder it writes): every command that writes an output folder."""
    cat = ["--data", str(data), "--category", "pill"]
    gens = ["--generated", str(gen["crack"]), str(gen["spot"])]
    yield (
        ["generate", "--base", str(base), "--adapters", str(adapters), "--out", str(out), "--num-pairs", "1"],
        out,
    )
    yield ["masks", "--generated", str(gen["crack"])], gen["crack"]
    yield ["baseline", "perlin", *cat, "--anomaly", "crack", "--num-pairs", "1", "--out", str(out)], out
    yield (
        ["export", "anomalib", *gens, "--normal", str(data / "pill" / "train" / "good"), "--out", str(out)],
        out,
    )
    train = ["train", *cat, "--anomaly", "crack", "--base", str(base), "--out", str(out), "--max-steps", "1"]
    yield train, out / "pill" / "crack"
    yield (
        [
            "benchmark",
            "--data",
            str(data),
            "--out",
            str(out),
            "--methods",
            "crop-paste",
            "--quick",
            "--no-quality",
            "--random-init",
        ],
        out,
    )
    yield ["evaluate", "localization", *cat, *gens, "--out", str(out), "--epochs", "1"], out
    yield (
        ["evaluate", "classification", *cat, *gens, "--out", str(out), "--epochs", "1", "--random-init"],
        out,
    )
    quality = ["--inception-weights", str(weights[0]), "--lpips-vgg-weights", str(weights[1])]
    yield ["evaluate", "quality", *cat, *gens, "--out", str(out), *quality], out


@pytest.mark.slow
def test_every_writer_is_refused_while_another_holds_its_folder(
    synthetic_pill_root,
    tiny_base_dir,
    tiny_adapters,
    pill_generated,
    random_quality_weights,
    tmp_path,
    capsys,
):
    from dualanodiff.cli import main as cli

    out = tmp_path / "out"
    commands = list(
        _writer_commands(
            synthetic_pill_root, tiny_base_dir, tiny_adapters, pill_generated, random_quality_weights, out
        )
    )
    for argv, folder in commands:
        before = sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else []
        holder = Holder(folder, "someone else")
        try:
            code = cli(argv)
        finally:
            holder.close()
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (argv, err)
        assert f"{folder} is being written by `someone else` (pid {holder.proc.pid}" in err[0], err
        after = sorted(p.relative_to(folder) for p in folder.rglob("*") if STATE_DIR not in p.parts)
        assert after == [p for p in before if STATE_DIR not in p.parts], argv  # nothing written


def test_a_newcomer_that_locked_a_removed_admission_file_takes_the_new_one(tmp_path, monkeypatch) -> None:
    """The interleaving the race above can only hit by chance, made to happen: while a newcomer waits on the
    admission lock, the leaving writer removes that file. The newcomer must not count the lock of the
    removed file as admission (a second newcomer would lock the new file and both be admitted)."""
    import fcntl

    from dualanodiff import locking

    with output_lock(tmp_path, "export"):
        pass  # leaves no files; the newcomer below creates them
    real_flock, removed = fcntl.flock, []  # (the removed file's inode number may be reused once closed)

    def leaver_removes_it_while_we_wait(fd, op):
        if op == fcntl.LOCK_EX and not removed:
            removed.append(os.fstat(fd))
            (tmp_path / STATE_DIR / "admit.lock").unlink()
        return real_flock(fd, op)

    monkeypatch.setattr(locking.fcntl, "flock", leaver_removes_it_while_we_wait)
    fd = locking._admitted(tmp_path)
    try:
        now = os.stat(tmp_path / STATE_DIR / "admit.lock")
        assert removed and os.path.samestat(os.fstat(fd), now)  # the file at the path, not the removed one
    finally:
        os.close(fd)
