"""Platforms a worker can build besides its own, through user-mode emulation."""

from __future__ import annotations

from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")

# binfmt_misc entry names as Debian's qemu-user-static registers them.
_EMULATORS = {
    "qemu-aarch64": "linux/arm64",
    "qemu-x86_64": "linux/amd64",
    "qemu-arm": "linux/arm/v7",
    "qemu-riscv64": "linux/riscv64",
    "qemu-ppc64le": "linux/ppc64le",
    "qemu-s390x": "linux/s390x",
}


def emulated_platforms(native: str, binfmt_dir: Path = BINFMT_DIR) -> list[str]:
    """Return the platforms whose binaries the kernel runs through an enabled emulator.

    An entry needs the `F` flag (the emulator is opened when registered):
    without it, a `RUN` in a chroot cannot find the emulator binary.
    """
    platforms = []
    for name, platform in sorted(_EMULATORS.items()):
        if platform == native:
            continue
        entry = binfmt_dir / name
        try:
            text = entry.read_text()
        except OSError:
            continue
        lines = text.splitlines()
        flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
        if lines and lines[0].strip() == "enabled" and "F" in flags:
            platforms.append(platform)
    return platforms
