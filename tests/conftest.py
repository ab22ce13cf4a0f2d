import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH = "needs torch, which the API-only install (requirements/api.txt) leaves out"

# the API-only install runs the suite too (.ci/check-install): tests/ml imports torch throughout
collect_ignore = [] if HAS_TORCH else ["ml"]


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    for item in items:
        if item.get_closest_marker("torch"):
            item.add_marker(pytest.mark.skip(reason=NO_TORCH))


@pytest.fixture(scope="session", autouse=True)
def _auto_precision_is_fp32():
    """train.precision 'auto' resolves to fp32 in this test process, whatever the CPU: the learning
    tests were calibrated in fp32, and bf16's rounding moves their effects. Tests that want bf16 ask
    for it by name (tests/ml/test_precision.py); jobs in the processes the service tests start
    (htl serve, workers) resolve 'auto' as on any machine."""
    if not HAS_TORCH:
        yield
        return
    from ml import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "native_bf16", lambda device: False)
        yield


def shared_data_dir() -> Path:
    return Path(os.environ.get("HTL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "ham10000").is_dir():
        pytest.skip(f"real data not found at {path} (set HTL_SHARED_DATA to the folder holding ham10000/)")
    return path


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """One SeaweedFS for the session (each test uses buckets of its own)."""
    from tests.seaweedfs import start_seaweedfs, stop_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop_seaweedfs(server)


@pytest.fixture
def s3_bucket(seaweedfs, request) -> str:
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    seaweedfs.client().create_bucket(Bucket=bucket)
    return bucket
