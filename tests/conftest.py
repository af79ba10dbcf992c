import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (set REPRLAB_SHARED_DATA)")
    return path


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(scope="session")
def minilm_path():
    from reprlab.hub import resolve_model_path

    return resolve_model_path("minilm")
