"""Print a host probe and the selection it leads to, for people (`--probe`) and tools (`--json`)."""

from __future__ import annotations

from .probe import Check, HostProfile
from .selection import Selection

_CHECKS = (
    ("container", "container"),
    ("userns", "user namespaces"),
    ("subids", "subuid/subgid"),
    ("fuse_device", "/dev/fuse"),
    ("tun_device", "/dev/net/tun"),
    ("fuse_overlayfs", "fuse-overlayfs"),
    ("overlay_mount", "overlay mount"),
    ("docker", "docker"),
    ("buildah", "buildah"),
)


def probe_json(profile: HostProfile, selection: Selection | None, error: str | None) -> dict:
    """Return the probe, the choice, the later candidates and the rejections as one document."""
    document: dict = {"profile": profile.to_json(), "choice": None, "candidates": [], "rejected": []}
    if selection:
        document.update(selection.to_json())
        if selection.candidates:
            document["choice"] = selection.candidates[0].to_json()
    if error:
        document["error"] = error
    return document


def format_probe(profile: HostProfile, selection: Selection | None, error: str | None) -> str:
    """Return the probe as aligned text: facts with evidence, then the choice and the rejections."""
    lines = [
        f"host: {profile.os}/{profile.arch}, kernel {profile.kernel}, user {profile.user} (uid {profile.uid})",
        "probe:",
    ]
    for attribute, title in _CHECKS:
        lines.append(_check_line(title, getattr(profile, attribute)))
    for name, check in profile.runtimes.items():
        lines.append(_check_line(f"runtime {name}", check))

    if error:
        lines.append(f"error: {error}")
        return "\n".join(lines)
    assert selection is not None
    if selection.candidates:
        lines.append(f"choice: {selection.candidates[0].label} (a proof build confirms it at start)")
        for candidate in selection.candidates[1:]:
            lines.append(f"  fallback: {candidate.label}")
    else:
        lines.append("choice: none; no Buildah mode can work on this host")
    if selection.rejected:
        lines.append("rejected:")
        for rejection in selection.rejected:
            lines.append(f"  {rejection.candidate}: {rejection.reason}")
    return "\n".join(lines)


def _check_line(title: str, check: Check) -> str:
    answer = "yes" if check.ok else "no"
    return f"  {title:<16} {answer:<4} {check.evidence}"
