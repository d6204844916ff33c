"""Shared fixtures: one local cloud (moto on 127.0.0.1 running template.yaml) for the whole test session.

Tests use fresh stream ids, so they never see each other's streams; a test that changes a setting restores it.
"""

import os
import uuid

import pytest

from localcloud.cloud import LocalCloud


@pytest.fixture(scope="session")
def cloud():
    with LocalCloud() as local:
        yield local


@pytest.fixture
def stream_id():
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def setting(cloud):
    """Change an environment setting of the functions for one test, as a changed template parameter would."""
    saved = {}

    def set_(name, value):
        saved.setdefault(name, os.environ.get(name))
        os.environ[name] = str(value)

    yield set_
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
