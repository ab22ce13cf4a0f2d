import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("HTL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "ham10000").is_dir():
        pytest.skip(f"real data not found at {path} (set HTL_SHARED_DATA to the folder holding ham10000/)")
    return path
