"""artifact_manifest's pins and artifact_fetch's happy path: what the cache verified is what the
fleet pins, the fleet fetches exactly those bytes, and a second run changes nothing."""

from __future__ import annotations

import functools
import grp
import hashlib
import http.server
import json
import os
import struct
import threading

import pytest
from ansible_collections.gpufleet.serving.plugins.modules import artifact_fetch, artifact_manifest
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args, run_as_module


def safetensors(data):
    raw = json.dumps({"a": {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(raw)) + raw + data


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """AnsibleModule keeps warnings in a module-level dict: start each test with none."""
    run_as_module(monkeypatch)


def run(capsys, module, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    result = json.loads(capsys.readouterr().out)
    result["rc"] = exited.value.code
    return result


@pytest.fixture
def served(tmp_path):
    """A cache directory (a model and wheels, recorded by artifact_manifest) served over HTTP on loopback."""
    root = tmp_path / "cache"
    model = root / "models" / "tiny"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "sub" / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(safetensors(b"\0" * 16))
    wheels = root / "pip" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "idna-3.10-py3-none-any.whl").write_bytes(b"idna")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def test_the_cache_returns_the_pins_of_what_it_verified(capsys, served):
    root, _url = served
    model = run(
        capsys, artifact_manifest, {"path": str(root / "models/tiny"), "kind": "model", "manifest": str(root / "models/tiny.manifest.json"), "create": True}
    )
    assert model["rc"] == 0 and model["created"] and model["changed"]
    assert model["manifest_sha256"] == hashlib.sha256((root / "models/tiny.manifest.json").read_bytes()).hexdigest()
    wheels_args = {
        "path": str(root / "pip/wheels"),
        "kind": "wheels",
        "manifest": str(root / "pip/manifest.json"),
        "create": True,
        "index_dir": str(root / "pip"),
    }
    wheels = run(capsys, artifact_manifest, wheels_args)
    assert wheels["requirements_sha256"] == hashlib.sha256((root / "pip/requirements.txt").read_bytes()).hexdigest()
    again = run(capsys, artifact_manifest, wheels_args)
    assert (again["changed"], again["requirements_sha256"]) == (False, wheels["requirements_sha256"])


def test_a_hub_manifest_gets_the_sha256_of_every_file(capsys, served):
    root, _url = served
    model = root / "models/tiny"
    siblings = [{"rfilename": "config.json", "size": (model / "config.json").stat().st_size}]
    data = (model / "model.safetensors").read_bytes()
    siblings.append({"rfilename": "model.safetensors", "size": 135, "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}})
    (root / "listing.json").write_text(json.dumps({"id": "org/tiny", "sha": "abc", "siblings": siblings}))
    args = {
        "path": str(model),
        "kind": "model",
        "manifest": str(root / "m.json"),
        "hub_listing": str(root / "listing.json"),
        "patterns": ["*.json", "*.safetensors"],
    }
    result = run(capsys, artifact_manifest, args)
    written = json.loads((root / "m.json").read_text())
    assert written["files"]["config.json"]["sha256"] == hashlib.sha256((model / "config.json").read_bytes()).hexdigest()
    assert run(capsys, artifact_manifest, args)["changed"] is False and result["changed"] is True


def test_the_fleet_fetches_the_pinned_model_and_a_second_run_changes_nothing(capsys, served, tmp_path):
    root, url = served
    pin = run(
        capsys, artifact_manifest, {"path": str(root / "models/tiny"), "kind": "model", "manifest": str(root / "models/tiny.manifest.json"), "create": True}
    )["manifest_sha256"]
    group = grp.getgrgid(os.getgid()).gr_name
    args = {"kind": "model", "url": url + "/models/tiny", "dest": str(tmp_path / "gpu/tiny"), "sha256": pin, "group": group}
    (tmp_path / "gpu").mkdir()
    checked = run(capsys, artifact_fetch, args, check_mode=True)
    assert checked["changed"] and sorted(checked["fetched"]) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert list((tmp_path / "gpu").iterdir()) == []
    first = run(capsys, artifact_fetch, args)
    assert first["rc"] == 0 and first["changed"] and first["files"] == 3
    assert (tmp_path / "gpu/tiny/sub/tokenizer.json").read_text() == "{}"
    assert oct((tmp_path / "gpu/tiny/model.safetensors").stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "gpu/tiny/sub").stat().st_mode & 0o777) == "0o750"
    assert (tmp_path / "gpu/tiny.manifest.json").read_bytes() == (root / "models/tiny.manifest.json").read_bytes()
    second = run(capsys, artifact_fetch, args)
    assert (second["changed"], second["fetched"]) == (False, [])
    # One file altered on the GPU server: only that one is fetched again.
    (tmp_path / "gpu/tiny/config.json").write_text('{"model_type": "llamb"}')
    assert run(capsys, artifact_fetch, args)["fetched"] == ["config.json"]


def test_the_fleet_fetches_the_pinned_requirements_file(capsys, served, tmp_path):
    root, url = served
    pin = run(
        capsys,
        artifact_manifest,
        {"path": str(root / "pip/wheels"), "kind": "wheels", "manifest": str(root / "pip/m.json"), "create": True, "index_dir": str(root / "pip")},
    )["requirements_sha256"]
    args = {"kind": "file", "url": url + "/pip/requirements.txt", "dest": str(tmp_path / "requirements.txt"), "sha256": pin}
    assert run(capsys, artifact_fetch, args)["changed"] is True
    assert (tmp_path / "requirements.txt").read_bytes() == (root / "pip/requirements.txt").read_bytes()
    assert run(capsys, artifact_fetch, args)["changed"] is False
    (root / "pip/requirements.txt").write_text("evil==1.0\n")
    refused = run(capsys, artifact_fetch, args)
    assert refused["failed"] and "but the cache pinned %s" % pin in refused["msg"]
    assert "evil" not in (tmp_path / "requirements.txt").read_text()
