"""Prove a candidate with a small real build before the worker takes tasks.

The proof build starts from the farm's BusyBox base and runs one `RUN`,
so it exercises what a stage needs: pulling from the registry, the
storage driver's mounts, and running a process under the candidate's
isolation, runtime and network. The first candidate whose proof build
succeeds is chosen; every failure is logged with Buildah's error and
kept as a rejection.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from .buildah import Buildah, BuildahError
from .modes import DockerModeError
from .selection import Candidate, Rejection, Selection

log = structlog.get_logger(__name__)

PROOF_IMAGE = "localhost/farm-proof:latest"


def proof_dockerfile(base_image: str) -> str:
    return f"FROM {base_image}\nRUN echo proof > /farm-proof && cat /farm-proof\n"


def prove(buildah: Buildah, work_dir: Path, base_image: str) -> str | None:
    """Build the proof image with `buildah`; return Buildah's error, or None when it works."""
    scratch = Path(tempfile.mkdtemp(prefix="proof-", dir=work_dir))
    try:
        prepare = getattr(buildah.launcher, "prepare", None)
        if prepare:
            prepare()
        buildah.remove_containers()
        dockerfile = scratch / "Dockerfile"
        dockerfile.write_text(proof_dockerfile(base_image))
        context = scratch / "context"
        context.mkdir()
        output = buildah.build(dockerfile, context, PROOF_IMAGE, {})
        if not output.ok:
            return (
                output.error_line or f"buildah exited with status {output.returncode}: {output.text[-500:]}"
            )
        if "proof" not in output.lines:
            return "the proof build's RUN step printed nothing"
        buildah.run("rmi", PROOF_IMAGE)
        return None
    except (BuildahError, DockerModeError, subprocess.TimeoutExpired, OSError) as error:
        return str(error)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def choose(
    selection: Selection,
    make: Callable[[Candidate], Buildah],
    work_dir: Path,
    base_image: str,
) -> tuple[Candidate, Buildah] | None:
    """Return the first candidate whose proof build works, or None.

    Each failed candidate is appended to `selection.rejected` with the
    build's error.
    """
    for candidate in selection.candidates:
        buildah = make(candidate)
        error = prove(buildah, work_dir, base_image)
        if error is None:
            log.info("buildah mode selected", candidate=candidate.label)
            return candidate, buildah
        log.warning("candidate rejected by the proof build", candidate=candidate.label, reason=error)
        selection.rejected.append(Rejection(candidate.label, f"proof build failed: {error}"))
    return None
