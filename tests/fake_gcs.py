"""An in-memory stand-in for Google Cloud Storage, for offline tests of gs:// work dirs.

No GCS emulator is installed in the test environment (none of the PyPI ones, e.g.
gcp-storage-emulator, is a dependency), so `gs://` is served by an fsspec in-memory
filesystem registered under the `gs`/`gcs` protocols, and etils.epath is told to use
fsspec rather than tf.io.gfile for URLs (`EPATH_USE_TF=false`). This covers everything
that goes through `gpa_jax.paths` / epath. It does not cover clients that speak to GCS
themselves: tf.io.gfile (TensorBoard event files, TFDS) and tensorstore (Orbax array
data) would still try the real service.

Use the `fake_gcs` fixture: it yields the URL of an empty bucket and points the per-host
cache of `gpa_jax.paths.local_path` into the test's tmp_path.
"""

from __future__ import annotations

import importlib

import fsspec
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

BUCKET = "gs://fake-bucket"


class FakeGCSFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem with gcsfs's path convention ("bucket/object", no
    leading slash, protocol stripped) and an object modification time, as GCS has."""

    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}  # its own store, not the one of memory://
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.strip("/")

    def info(self, path, **kwargs):
        info = super().info(path, **kwargs)
        if info["type"] == "file":
            info["mtime"] = self.store[self._strip_protocol(path)].modified
        return info

    @classmethod
    def reset(cls) -> None:
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]


def _registry_module():
    # `fsspec.registry` is the read-only mapping; the module holds the writable dict.
    return importlib.import_module("fsspec.registry")


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    """Serves gs:// from memory for the duration of one test; yields the bucket URL."""
    registry = _registry_module()._registry
    saved = {name: registry.get(name) for name in ("gs", "gcs")}
    monkeypatch.setenv("EPATH_USE_TF", "false")
    monkeypatch.setenv("GPA_JAX_CACHE_DIR", str(tmp_path / "remote_cache"))
    monkeypatch.delenv("GPA_JAX_GCSFUSE_ROOT", raising=False)
    for name in saved:
        fsspec.register_implementation(name, FakeGCSFileSystem, clobber=True)
    FakeGCSFileSystem.reset()
    FakeGCSFileSystem.clear_instance_cache()
    gpath._is_tf_installed.cache_clear()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        yield BUCKET
    finally:
        for name, cls in saved.items():
            if cls is None:
                registry.pop(name, None)
            else:
                registry[name] = cls
        FakeGCSFileSystem.reset()
        gpath._is_tf_installed.cache_clear()
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
