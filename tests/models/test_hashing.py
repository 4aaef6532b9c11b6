import hashlib
import json
import os

from sksbooth.models.hashing import cached_file_sha256, hash_cache_file


def test_the_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SKSBOOTH_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    assert cached_file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()

    # A remembered entry is used as is (A1111 trusts its cache.json the same way)...
    cache = json.loads(hash_cache_file().read_text())
    (entry,) = cache.values()
    entry["sha256"] = "f" * 64
    hash_cache_file().write_text(json.dumps(cache))
    assert cached_file_sha256(model) == "f" * 64

    # ...until the file changes: same size, new content and mtime -> hashed again.
    model.write_bytes(b"WEIGHTS" * 1000)
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cached_file_sha256(model) == hashlib.sha256(b"WEIGHTS" * 1000).hexdigest()


def test_an_unwritable_or_corrupt_cache_only_costs_the_time(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SKSBOOTH_CACHE_DIR", str(blocker))
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"abc")
    assert cached_file_sha256(model) == hashlib.sha256(b"abc").hexdigest()

    monkeypatch.setenv("SKSBOOTH_CACHE_DIR", str(tmp_path / "cache"))
    hash_cache_file().parent.mkdir()
    hash_cache_file().write_text("{not json")
    assert cached_file_sha256(model) == hashlib.sha256(b"abc").hexdigest()
