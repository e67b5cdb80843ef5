"""An in-memory stand-in for Google Cloud Storage, for offline tests of gs:// work dirs.

No GCS emulator is installed in the test environment (none of the PyPI ones, e.g.
gcp-storage-emulator, is a dependency), so `gs://` is served by an fsspec in-memory
filesystem registered under the `gs`/`gcs` protocols, and etils.epath is told to use
fsspec rather than tf.io.gfile for URLs (`EPATH_USE_TF=false`). This covers everything
that goes through `gpa_jax.paths` / epath. Clients that speak to GCS themselves are not
covered by it: tf.io.gfile (TensorBoard event files, TFDS) would still try the real
service; tensorstore is, with `fake_gcs_with_tensorstore` below.

Use the `fake_gcs` fixture: it yields the URL of an empty bucket and points the per-host
cache of `gpa_jax.paths.local_path` into the test's tmp_path. `fake_gcs_with_tensorstore`
also serves that bucket over a small GCS JSON API server on localhost, which tensorstore
(Orbax checkpoints) is pointed at; TensorFlow's own GCS client is still not covered.
"""

from __future__ import annotations

import http.server
import importlib
import json
import threading
import urllib.parse

import fsspec
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

BUCKET = "gs://fake-bucket"


class FakeGCSFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem with gcsfs's path convention ("bucket/object", no
    leading slash, protocol stripped) and an object modification time, as GCS has."""

    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}  # its own store, not the one of memory://
    pseudo_dirs = [""]
    generation = 0  # the last object generation handed out over the JSON API

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


class _JsonApiHandler(http.server.BaseHTTPRequestHandler):
    """The slice of GCS's JSON API that tensorstore's `gcs` kvstore (Orbax's array data)
    uses: media GET (with Range), metadata GET, media upload, DELETE and listing, with
    generation preconditions. Objects live in FakeGCSFileSystem.store, so fsspec/epath
    and tensorstore see one bucket."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, value):
        self._reply(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _parse(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = url.path.split("/")
        return parts, query

    @staticmethod
    def _generation(f) -> int:
        return getattr(f, "generation", None) or int(f.modified.timestamp() * 1e6)

    def _metadata(self, bucket, name, f):
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "size": str(f.size), "generation": str(self._generation(f)),
                "metageneration": "1", "updated": f.modified.isoformat()}  # fmt: skip

    def _precondition_failed(self, f, query) -> bool:
        gen = 0 if f is None else self._generation(f)
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != gen:
            return True
        return "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == gen

    def do_GET(self):
        parts, query = self._parse()
        store = FakeGCSFileSystem.store
        # /storage/v1/b/<bucket>/o[/<object>]
        if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 6 or parts[5] != "o":
            return self._reply(400)
        bucket = parts[4]
        if len(parts) == 6:  # listing
            prefix = query.get("prefix", "")
            start, end = query.get("startOffset", ""), query.get("endOffset")
            items = []
            for key in sorted(store):
                b, _, name = key.partition("/")
                if b != bucket or not name.startswith(prefix) or name < start:
                    continue
                if end is not None and name >= end:
                    continue
                items.append(self._metadata(bucket, name, store[key]))
            return self._json(200, {"kind": "storage#objects", "items": items})
        name = urllib.parse.unquote(parts[6])
        f = store.get(f"{bucket}/{name}")
        if f is None:
            return self._json(404, {"error": {"code": 404, "message": "No such object"}})
        if self._precondition_failed(f, query):
            status = 304 if "ifGenerationNotMatch" in query else 412
            return self._reply(status)
        if query.get("alt") != "media":
            return self._json(200, self._metadata(bucket, name, f))
        data = f.getvalue()
        headers = {"x-goog-generation": str(self._generation(f))}
        byte_range = self.headers.get("Range")
        if byte_range and byte_range.startswith("bytes="):
            first, _, last = byte_range[6:].partition("-")
            first = int(first) if first else max(0, len(data) - int(last))
            last = int(last) if (last and byte_range[6:][0] != "-") else len(data) - 1
            chunk = data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{first + len(chunk) - 1}/{len(data)}"
            return self._reply(206, chunk, headers)
        return self._reply(200, data, headers)

    def do_POST(self):
        parts, query = self._parse()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts[1:5] != ["upload", "storage", "v1", "b"] or "name" not in query:
            return self._reply(400)
        bucket, name = parts[5], query["name"]
        key = f"{bucket}/{name}"
        store = FakeGCSFileSystem.store
        if self._precondition_failed(store.get(key), query):
            return self._reply(412)
        f = MemoryFile(None, key, body)
        FakeGCSFileSystem.generation += 1
        f.generation = FakeGCSFileSystem.generation
        store[key] = f
        return self._json(200, self._metadata(bucket, name, f))

    def do_DELETE(self):
        parts, query = self._parse()
        bucket, name = parts[4], urllib.parse.unquote(parts[6])
        key = f"{bucket}/{name}"
        store = FakeGCSFileSystem.store
        if key not in store:
            return self._reply(404)
        if self._precondition_failed(store[key], query):
            return self._reply(412)
        del store[key]
        return self._reply(204)


_SERVER: list = []


def json_api_url() -> str:
    """The URL of this process's JSON API server for the fake bucket (started once and
    kept: tensorstore may keep its endpoint for the life of the process)."""
    if not _SERVER:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonApiHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _SERVER.append(server)
    return f"http://127.0.0.1:{_SERVER[0].server_port}"


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


@pytest.fixture
def fake_gcs_with_tensorstore(fake_gcs, monkeypatch):
    """`fake_gcs`, also reachable by tensorstore (Orbax's array data) through the JSON API
    server on localhost (TENSORSTORE_GCS_HTTP_URL, a test token instead of credentials).

    Orbax asks google-cloud-storage whether a gs:// bucket has a hierarchical namespace;
    that client is not installed here (and would need credentials), so the answer is
    fixed to "no" (a flat bucket, what the fake is)."""
    from orbax.checkpoint._src.path import gcs_utils

    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", json_api_url())
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-token")
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    yield fake_gcs
