"""Faults on demand inside the Ray workers of tests/test_ray.py (its Ray runs ``install`` in every worker).

A test asks for a fault by writing a file into the folder named by ``$DUALANODIFF_TEST_FAULTS``:

- ``kill`` holding a folder suffix (``generated/dualanodiff/pill/crack``): the worker writing that folder
  kills itself with SIGKILL right after writing its first pair, as the kernel's OOM killer or a lost node
  would end it. The file is taken by the first worker to act on it, so the retry runs undisturbed.
- ``fail`` holding a folder suffix: every write into that folder raises ``RuntimeError`` (a step that keeps
  failing).
- ``blind``: the shared-storage probe on this node looks for the output folder where there is none.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULTS_ENV = "DUALANODIFF_TEST_FAULTS"


def _fault(name: str) -> str | None:
    path = Path(os.environ[FAULTS_ENV]) / name
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _take(name: str) -> None:
    """Consume a fault file; only one process succeeds."""
    os.rename(
        Path(os.environ[FAULTS_ENV]) / name, Path(os.environ[FAULTS_ENV]) / f"{name}.taken-{os.getpid()}"
    )


def install() -> None:
    if FAULTS_ENV not in os.environ:
        return
    import dualanodiff.executors.ray_cluster as ray_cluster
    from dualanodiff.data.generated import GeneratedWriter

    real_write, real_probe = GeneratedWriter.write, ray_cluster.probe_node

    def write(self, index, *args, **kwargs):
        failing = _fault("fail")
        if failing and self.out_dir.as_posix().endswith(failing):
            raise RuntimeError(f"injected failure writing {self.out_dir}")
        record = real_write(self, index, *args, **kwargs)
        killing = _fault("kill")
        if killing and self.out_dir.as_posix().endswith(killing):
            try:
                _take("kill")
            except OSError:
                return record  # another worker took it
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    def probe_node(cwd, out, token, answer, inputs):
        if _fault("blind") is not None:
            out = f"{out}-not-mounted-here"
        return real_probe(cwd, out, token, answer, inputs)

    GeneratedWriter.write = write
    ray_cluster.probe_node = probe_node
