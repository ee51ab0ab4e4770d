"""Settings read from the environment, and the errors a wrong value gives."""

from __future__ import annotations

import pytest

from farm.config import Settings
from farm.errors import FarmError


def test_push_compression_choices() -> None:
    assert Settings.from_env({}).push_compression == "gzip"
    assert Settings.from_env({"FARM_PUSH_COMPRESSION": "zstd"}).push_compression == "zstd"


def test_push_compression_none_rejected() -> None:
    with pytest.raises(FarmError, match=r"invalid FARM_PUSH_COMPRESSION='none': expected one of gzip, zstd"):
        Settings.from_env({"FARM_PUSH_COMPRESSION": "none"})
