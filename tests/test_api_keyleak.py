"""Keys are never written down: not in logs, the cache file, exceptions, reprs or reports.

A distinctive fake key goes through batches full of faults (including a server that echoes the
credentials it received back in its error messages) with DEBUG logging into a file; then the
log, the cache's SQLite files and every error string are searched for the key.
"""

from __future__ import annotations

import json
import logging

import pytest
from api_servers import CUT, MALFORMED, FakeApiServer, echo_key, fast_settings, make_images, status

from vlmclf.models.api import (
    ApiAuthError,
    ApiFailure,
    ApiModelNotFound,
    load_api_model,
)

KEY = "sk-LEAKCHECK-5f0c2a9e7d1b43a8"
VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
             "gemini": "GEMINI_API_KEY"}


@pytest.fixture
def debug_log(tmp_path):
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root, api = logging.getLogger(), logging.getLogger("vlmclf.api")
    previous = (root.level, api.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    api.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    handler.close()
    root.setLevel(previous[0])
    api.setLevel(previous[1])


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_key_is_never_written_down(protocol, tmp_path, monkeypatch, debug_log):
    monkeypatch.setenv(VARIABLES[protocol], KEY)
    cache = tmp_path / "cache.sqlite"
    texts: list[str] = []
    faults = {"q0": [status(429, retry_after=0.01), echo_key(500)], "q1": [MALFORMED, CUT]}
    with FakeApiServer(protocol, key=KEY, by_prompt=faults,
                       always={"q2": echo_key(400)}) as server:
        model = load_api_model(f"{protocol}:test-model", **fast_settings(server, cache))
        out = model.generate(make_images(4), [f"q{i}" for i in range(4)], 5)
        texts += [repr(model), json.dumps(model.usage()), repr(out)]
        texts += [json.dumps(a.meta) for a in out if not isinstance(a, ApiFailure)]
        assert isinstance(out[2], ApiFailure) and "***" in str(out[2])  # echoed, then masked
        assert [str(a) for a in out if not isinstance(a, ApiFailure)] == [
            "answer to q0", "answer to q1", "answer to q3"]

        logging.getLogger("vlmclf.api").warning("a careless message with %s in it", KEY)
        unknown = load_api_model(f"{protocol}:no-such-model", **fast_settings(server, cache))
        with pytest.raises(ApiModelNotFound) as not_found:
            unknown.generate(make_images(1), ["q"], 5)
        texts += [str(not_found.value), repr(not_found.value)]
    with FakeApiServer(protocol, key="another-key") as server:
        rejected = load_api_model(f"{protocol}:test-model", **fast_settings(server, cache))
        with pytest.raises(ApiAuthError) as auth:
            rejected.generate(make_images(1), ["q"], 5)
        texts += [str(auth.value), repr(auth.value)]

    sent = server.requests  # the key really was sent in headers, never in a URL
    assert any(KEY in json.dumps(r.headers) for r in sent)
    assert KEY not in json.dumps([r.path for r in sent])
    log = debug_log.read_bytes()
    assert b"retry" in log and b"***" in log  # the log is not empty, and redaction happened
    assert KEY.encode() not in log
    for suffix in ("", "-wal", "-shm"):
        stored = cache.with_name(cache.name + suffix)
        if stored.exists():
            assert KEY.encode() not in stored.read_bytes(), stored
    for text in texts:
        assert KEY not in text
