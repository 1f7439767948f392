"""Bad and hostile input against the artifact cache: artifact_manifest (the cache's side) and
artifact_fetch (the GPU servers' side), each run as Ansible runs a module (a subprocess with
its arguments file), bounded in time, and classified: a clear error naming the input, a
traceback, a hang, or accepted. Every case must end in a clear error and leave nothing written."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULES = "ansible_collections.gpufleet.serving.plugins.modules."
LIMIT_S = 30


def run_module(name, args, tmp_path):
    """(class, msg): class is clear, traceback, hang or accepted."""
    args_file = tmp_path / ("args-%d.json" % time.monotonic_ns())
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_tmpdir=str(tmp_path))}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "collections"))
    try:
        run = subprocess.run([sys.executable, "-m", MODULES + name, str(args_file)], capture_output=True, text=True, timeout=LIMIT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        return "hang", ""
    if "Traceback" in run.stderr or "Traceback" in run.stdout:
        return "traceback", run.stdout + run.stderr
    try:
        result = json.loads(run.stdout)
    except ValueError:
        return "traceback", run.stdout + run.stderr
    if result.get("failed"):
        msg = result.get("msg", "")
        return ("clear" if "unexpectedly" not in msg else "traceback"), msg
    return "accepted", json.dumps(result)


def safetensors(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD_TENSORS = safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)


def model_dir(tmp_path, files=None):
    root = tmp_path / "model"
    root.mkdir(exist_ok=True)
    for name, data in (files or {"config.json": b"{}", "model.safetensors": GOOD_TENSORS}).items():
        (root / name).write_bytes(data)
    return root


def manifest_of(files):
    return {"version": 1, "kind": "model", "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}}


def deep(levels):
    return "[" * levels + "]" * levels


# --- artifact_manifest (the cache) --------------------------------------------------


def _manifest_case(tmp_path, content, expect):
    root = model_dir(tmp_path)
    path = tmp_path / "m.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return {"path": str(root), "kind": "model", "manifest": str(path)}, expect


MANIFEST_CASES = {
    "manifest a JSON list": ([{"files": {}}], "JSON list"),
    "manifest sizes are strings": ({"kind": "model", "files": {"config.json": {"size": "2", "sha256": "0" * 64}}}, "size of config.json"),
    "manifest size negative": ({"kind": "model", "files": {"config.json": {"size": -1, "sha256": "0" * 64}}}, "size of config.json"),
    "manifest size a boolean": ({"kind": "model", "files": {"config.json": {"size": True, "sha256": "0" * 64}}}, "size of config.json"),
    "manifest size 10**30": ({"kind": "model", "files": {"config.json": {"size": 10**30, "sha256": "0" * 64}}}, "size of config.json"),
    "manifest name ../": ({"kind": "model", "files": {"../../x": {"size": 1, "sha256": "0" * 64}}}, "'../../x' is refused"),
    "manifest name absolute": ({"kind": "model", "files": {"/etc/passwd": {"size": 1, "sha256": "0" * 64}}}, "'/etc/passwd' is refused"),
    "manifest name with a newline": ({"kind": "model", "files": {"a\nb": {"size": 1, "sha256": "0" * 64}}}, "is refused"),
    "manifest name with a space": ({"kind": "model", "files": {"a b.json": {"size": 1, "sha256": "0" * 64}}}, "is refused"),
    "manifest sha256 not hex": ({"kind": "model", "files": {"config.json": {"size": 2, "sha256": "xyz"}}}, "sha256 of config.json"),
    "manifest without sha256 (model)": ({"kind": "model", "files": {"config.json": {"size": 2}}}, "sha256 of config.json"),
    "manifest files a list": ({"kind": "model", "files": ["config.json"]}, "has no files"),
    "manifest entry a string": ({"kind": "model", "files": {"config.json": "2"}}, "entry of config.json"),
    "manifest of another kind": ({"kind": "wheels", "files": {}}, "not model"),
    "manifest not JSON": ("{nope", "not JSON"),
    "manifest nested 100000 deep": (deep(100000), "nested too deeply"),
    "manifest requirements not a list": ({"kind": "model", "files": {"config.json": {"size": 2, "sha256": "0" * 64}}, "requirements": "x"}, "requirements"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_artifact_manifest_refuses_a_bad_manifest(tmp_path, case):
    args, expect = _manifest_case(tmp_path, *MANIFEST_CASES[case])
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "directory"])
def test_artifact_manifest_refuses_a_manifest_that_is_not_a_file(tmp_path, special):
    root = model_dir(tmp_path)
    path = tmp_path / "m.json"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "directory":
        path.mkdir()
    else:
        path = Path(special)
    kind, msg = run_module("artifact_manifest", {"path": str(root), "kind": "model", "manifest": str(path)}, tmp_path)
    assert (kind, "not a regular file" in msg or "cannot be read" in msg) == ("clear", True), msg


@pytest.mark.parametrize("name", ["evil pkg-1.0-py3-none-any.whl", "evil-1.0-py3-none-any.whl\nx==1", "a-1.0-py3-none-any\tb.whl"])
def test_artifact_manifest_refuses_wheel_names_that_would_inject_into_requirements(tmp_path, name):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ok-1.0-py3-none-any.whl").write_bytes(b"ok")
    (wheels / (name if name.endswith(".whl") else name + ".whl")).write_bytes(b"bad")
    args = {"path": str(wheels), "kind": "wheels", "manifest": str(tmp_path / "m.json"), "create": True, "index_dir": str(tmp_path / "pip")}
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, "not a wheel file name" in msg) == ("clear", True), msg
    assert not (tmp_path / "pip").exists() and not (tmp_path / "m.json").exists()


def test_artifact_manifest_refuses_a_symlink_out_of_the_cache(tmp_path):
    root = model_dir(tmp_path)
    (root / "secret.json").symlink_to("/etc/passwd")
    args = {"path": str(root), "kind": "model", "manifest": str(tmp_path / "m.json"), "create": True}
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, "symbolic link out of" in msg) == ("clear", True), msg
    assert not (tmp_path / "m.json").exists()


LISTING_CASES = {
    "listing a JSON list": ([], "not an object"),
    "listing entry ../../x": ({"siblings": [{"rfilename": "../../x", "size": 1}]}, "'../../x' is refused"),
    "listing entry a string": ({"siblings": ["config.json"]}, "not an object"),
    "listing size a string": ({"siblings": [{"rfilename": "config.json", "size": "2"}]}, "size of config.json"),
    "listing lfs sha256 not hex": (
        {"siblings": [{"rfilename": "model.safetensors", "size": 1, "lfs": {"size": len(GOOD_TENSORS), "sha256": "no"}}]},
        "sha256 of model.safetensors",
    ),
    "listing lfs a list": ({"siblings": [{"rfilename": "config.json", "size": 2, "lfs": [1]}]}, "lfs of config.json"),
}


@pytest.mark.parametrize("case", sorted(LISTING_CASES))
def test_artifact_manifest_refuses_a_bad_hub_listing(tmp_path, case):
    listing, expect = LISTING_CASES[case]
    root = model_dir(tmp_path)
    (tmp_path / "l.json").write_text(json.dumps(listing))
    args = {"path": str(root), "kind": "model", "manifest": str(tmp_path / "m.json"), "hub_listing": str(tmp_path / "l.json")}
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg
    assert not (tmp_path / "m.json").exists()


LAYOUT_CASES = {
    "offsets not numbers": (safetensors({"a": {"data_offsets": ["0", "8"]}}, b"\0" * 8), "data_offsets"),
    "offsets lists": (safetensors({"a": {"data_offsets": [[0], [8]]}}, b"\0" * 8), "data_offsets"),
    "offsets negative": (safetensors({"a": {"data_offsets": [-8, 0]}}), "data_offsets"),
    "offsets reversed": (safetensors({"a": {"data_offsets": [8, 0]}}, b"\0" * 8), "data_offsets"),
    "tensor info a string": (safetensors({"a": "x"}), "data_offsets"),
    "header a list": (safetensors([1, 2]), "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_artifact_manifest_reports_a_bad_safetensors_header(tmp_path, case):
    data, expect = LAYOUT_CASES[case]
    root = model_dir(tmp_path, {"config.json": b"{}", "model.safetensors": data})
    args = {"path": str(root), "kind": "model", "manifest": str(tmp_path / "m.json"), "create": True}
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg


@pytest.mark.parametrize(
    ("index", "expect"),
    [({"weight_map": ["a"]}, "must be objects"), ({"weight_map": {"a": "../x.safetensors"}}, "is refused"), ({"metadata": {"total_size": "8"}}, "total_size")],
)
def test_artifact_manifest_reports_a_bad_index(tmp_path, index, expect):
    root = model_dir(tmp_path, {"config.json": b"{}", "model.safetensors": GOOD_TENSORS, "model.safetensors.index.json": json.dumps(index).encode()})
    args = {"path": str(root), "kind": "model", "manifest": str(tmp_path / "m.json"), "create": True}
    kind, msg = run_module("artifact_manifest", args, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"path": "/nonexistent", "kind": "model", "manifest": "/nonexistent.json"}, "not a directory"),
        ({"kind": "wheels", "hub_listing": "/dev/null"}, "kind=model"),
    ],
)
def test_artifact_manifest_refuses_bad_arguments(tmp_path, args, expect):
    full = {"path": str(model_dir(tmp_path)), "manifest": str(tmp_path / "m.json"), **args}
    kind, msg = run_module("artifact_manifest", full, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg


# --- artifact_fetch (a GPU server) ----------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/trickle"):
            self.send_response(200)
            self.end_headers()
            for _byte in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache over HTTP on loopback, serving files put into its directory."""
    root = tmp_path_factory.mktemp("cache")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def _serve_model(cache, name, manifest, files=None):
    root, url = cache
    raw = (manifest if isinstance(manifest, str) else json.dumps(manifest)).encode()
    (root / (name + ".manifest.json")).write_bytes(raw)
    (root / name).mkdir(exist_ok=True)
    for rel, data in (files or {}).items():
        (root / name / rel).write_bytes(data)
    return url + "/" + name, hashlib.sha256(raw).hexdigest()


GOOD_FILES = {"config.json": b"{}", "model.safetensors": GOOD_TENSORS}


def _fetch_model(tmp_path, url, pin, **extra):
    dest = tmp_path / "gpu" / "tiny"
    dest.parent.mkdir(exist_ok=True)
    kind, msg = run_module("artifact_fetch", {"kind": "model", "url": url, "dest": str(dest), "sha256": pin, **extra}, tmp_path)
    return kind, msg, dest


def test_artifact_fetch_refuses_a_manifest_that_is_not_the_pinned_one(tmp_path, cache):
    url, pin = _serve_model(cache, "tampered", manifest_of(GOOD_FILES), GOOD_FILES)
    kind, msg, _dest = _fetch_model(tmp_path, url, "f" * 64)
    assert (kind, "but the cache pinned" in msg and "nothing was written" in msg) == ("clear", True), msg
    assert list((tmp_path / "gpu").iterdir()) == []
    assert pin != "f" * 64


FETCH_MANIFEST_CASES = {
    "name ../ with the right pin": ({"kind": "model", "files": {"../../x": {"size": 1, "sha256": "0" * 64}}}, "'../../x' is refused"),
    "absolute name": ({"kind": "model", "files": {"/tmp/x": {"size": 1, "sha256": "0" * 64}}}, "'/tmp/x' is refused"),
    "name with a space": ({"kind": "model", "files": {"a b": {"size": 1, "sha256": "0" * 64}}}, "'a b' is refused"),
    "hidden name": ({"kind": "model", "files": {".gpufleet-tmp-x": {"size": 1, "sha256": "0" * 64}}}, "is refused"),
    "manifest a JSON list": ([], "JSON list"),
    "entry without sha256": ({"kind": "model", "files": {"config.json": {"size": 2}}}, "sha256 of config.json"),
    "size a string": ({"kind": "model", "files": {"config.json": {"size": "2", "sha256": "0" * 64}}}, "size of config.json"),
}


@pytest.mark.parametrize("case", sorted(FETCH_MANIFEST_CASES))
def test_artifact_fetch_refuses_a_bad_manifest_even_with_its_pin(tmp_path, cache, case):
    manifest, expect = FETCH_MANIFEST_CASES[case]
    url, pin = _serve_model(cache, "bad-%d" % abs(hash(case)), manifest)
    kind, msg, _dest = _fetch_model(tmp_path, url, pin)
    assert (kind, expect in msg) == ("clear", True), msg
    assert list((tmp_path / "gpu").iterdir()) == []


@pytest.mark.parametrize(("served", "expect"), [(b"{}  ", "sent more than"), (b"{", "sent 1 bytes"), (b"[]", "sha256")])
def test_artifact_fetch_refuses_a_file_unlike_the_manifest_and_keeps_the_old_one(tmp_path, cache, served, expect):
    url, pin = _serve_model(cache, "swap-" + hashlib.sha256(served).hexdigest()[:12], manifest_of(GOOD_FILES), GOOD_FILES)
    kind, msg, dest = _fetch_model(tmp_path, url, pin)
    assert kind == "accepted", msg
    (cache[0] / url.rsplit("/", 1)[1] / "config.json").write_bytes(served)
    (dest / "config.json").write_bytes(b"{x")
    kind, msg, dest = _fetch_model(tmp_path, url, pin)
    assert (kind, expect in msg) == ("clear", True), msg
    assert (dest / "config.json").read_bytes() == b"{x"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"sha256": "abc"}, "64 lowercase hex"),
        ({"url": "http://cache/x\nHost: evil"}, "url must be"),
        ({"url": "ftp://cache/x"}, "url must be"),
        ({"url": "http://[::1"}, "cannot fetch"),
        ({"url": "http://127.0.0.1:9/x"}, "cannot fetch"),
        ({"dest": "relative/x"}, "absolute path"),
        ({"group": "no-such-group-here"}, "does not exist"),
        ({"deadline": 0}, "deadline must be"),
        ({"max_size": 10**12}, "max_size must be"),
    ],
)
def test_artifact_fetch_refuses_bad_arguments(tmp_path, args, expect):
    full = {"kind": "file", "url": "http://127.0.0.1:9/r.txt", "dest": str(tmp_path / "r.txt"), "sha256": "0" * 64, **args}
    kind, msg = run_module("artifact_fetch", full, tmp_path)
    assert (kind, expect in msg) == ("clear", True), msg
    assert not (tmp_path / "r.txt").exists()


def test_artifact_fetch_refuses_a_file_larger_than_allowed(tmp_path, cache):
    (cache[0] / "big.txt").write_bytes(b"x" * 2048)
    args = {"kind": "file", "url": cache[1] + "/big.txt", "dest": str(tmp_path / "r.txt"), "sha256": "0" * 64, "max_size": 1024}
    kind, msg = run_module("artifact_fetch", args, tmp_path)
    assert (kind, "larger than 1024 bytes" in msg) == ("clear", True), msg
    assert not (tmp_path / "r.txt").exists()


def test_artifact_fetch_gives_up_on_a_cache_that_trickles(tmp_path, cache):
    args = {"kind": "file", "url": cache[1] + "/trickle", "dest": str(tmp_path / "r.txt"), "sha256": "0" * 64, "deadline": 2}
    started = time.monotonic()
    kind, msg = run_module("artifact_fetch", args, tmp_path)
    assert (kind, "deadline" in msg) == ("clear", True), msg
    assert time.monotonic() - started < 15
    assert not (tmp_path / "r.txt").exists()


def test_artifact_fetch_does_not_follow_a_link_out_of_the_model_directory(tmp_path, cache):
    url, pin = _serve_model(cache, "linked", manifest_of({"sub/config.json": b"{}", "model.safetensors": GOOD_TENSORS}), {"model.safetensors": GOOD_TENSORS})
    (cache[0] / "linked" / "sub").mkdir()
    (cache[0] / "linked" / "sub" / "config.json").write_bytes(b"{}")
    dest = tmp_path / "gpu" / "tiny"
    dest.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    kind, msg, dest = _fetch_model(tmp_path, url, pin)
    assert (kind, "leads out of" in msg) == ("clear", True), msg
    assert list(outside.iterdir()) == []


def test_the_trickle_server_is_really_slow(cache):
    """The deadline case above needs a server that does not finish within the deadline."""
    with socket.create_connection(("127.0.0.1", int(cache[1].rsplit(":", 1)[1])), timeout=5) as conn:
        conn.sendall(b"GET /trickle HTTP/1.0\r\n\r\n")
        started, got = time.monotonic(), b""
        while time.monotonic() - started < 1:
            got += conn.recv(100)
    assert len(got) < 200
