#!/usr/bin/python
# Copyright: (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: artifact_fetch
short_description: Fetch a file or a model from the fleet's artifact cache, verified against hashes pinned by the play
version_added: 0.3.0
description:
  - The fleet's side of C(gpufleet.serving.artifact_cache). The cache serves over plain HTTP, so nothing it sends is
    trusted on its own; what it sends is checked against a sha256 the play carries from the run that filled the cache
    (the O(sha256) the C(gpufleet.serving.artifact_manifest) module returned there).
  - With O(kind=file), fetches one file (the hash-pinned C(requirements.txt)) into memory, bounded by O(max_size), checks
    its sha256 against O(sha256), and only then writes it to O(dest) (atomically, and only when it differs).
  - With O(kind=model), fetches the manifest at C(<url>.manifest.json), checks its sha256 against O(sha256), checks
    every file name in it (confined to O(dest), with no C(..), no absolute path, no whitespace or control character, no
    symbolic link out of O(dest)), and only then downloads each file that O(dest) lacks or holds in another version into
    a hidden temporary file beside it, checks its size and sha256 against the manifest, and moves it into place.
    Finally checks the safetensors headers and C(model.safetensors.index.json) and keeps the manifest at O(manifest_dest).
  - Nothing is written before the pinned file or manifest has been verified; a file that fails its check leaves its
    previous version in place. Every transfer is bounded in size and by O(deadline).
options:
  url:
    description:
      - C(http) or C(https) URL of the file (O(kind=file)) or of the model directory on the cache (O(kind=model));
        the manifest is fetched from C(<url>.manifest.json).
    type: str
    required: true
  kind:
    description: What is fetched.
    type: str
    choices: [file, model]
    required: true
  dest:
    description: The file (O(kind=file)) or the model directory (O(kind=model)) on this host.
    type: path
    required: true
  sha256:
    description: The pinned sha256 of the file (O(kind=file)) or of the model's manifest (O(kind=model)).
    type: str
    required: true
  manifest_dest:
    description: Where the verified manifest is kept (O(kind=model)); default C(<dest>.manifest.json).
    type: path
  group:
    description: Group of the files and directories written (files C(0640), directories C(0750)); without it, files are C(0644) and directories C(0755).
    type: str
  max_size:
    description: Largest file accepted with O(kind=file), in bytes (the model's manifest is bounded at 64 MiB).
    type: int
    default: 16777216
  timeout:
    description: Seconds one request may wait for the cache to answer.
    type: int
    default: 60
  deadline:
    description: Seconds the whole fetch may take.
    type: int
    default: 7200
  hash_files:
    description: Hash the model files already in O(dest) to decide whether they are current (false compares sizes only).
    type: bool
    default: true
author:
  - gpufleet.serving contributors (@gpufleet)
"""

EXAMPLES = r"""
- name: Fetch the hash-pinned requirements file, verified against the pin of the run that filled the cache
  gpufleet.serving.artifact_fetch:
    kind: file
    url: http://cache-01:8080/pip/requirements.txt
    dest: /opt/vllm/requirements.txt
    sha256: "{{ hostvars['cache-01'].ansible_facts.artifact_cache_pins.requirements_sha256 }}"

- name: Fetch the model, every file checked against the pinned manifest
  gpufleet.serving.artifact_fetch:
    kind: model
    url: http://cache-01:8080/models/llama
    dest: /var/lib/vllm/models/llama
    sha256: "{{ hostvars['cache-01'].ansible_facts.artifact_cache_pins.model_manifest_sha256 }}"
    group: vllm
"""

RETURN = r"""
fetched:
  description: The files downloaded by this run (O(kind=model)); for O(kind=file), the file's name when it was written.
  returned: success
  type: list
  elements: str
  sample: ["model-00001-of-00004.safetensors"]
files:
  description: Number of files in the manifest (O(kind=model)); 1 for O(kind=file).
  returned: success
  type: int
  sample: 12
bytes:
  description: Total size of the files in the manifest (O(kind=model)), or of the file.
  returned: success
  type: int
  sample: 16060522496
"""

import grp
import os
import re
import stat
import tempfile
import urllib.parse

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.gpufleet.serving.plugins.module_utils.artifact_cache import (
    MAX_JSON_BYTES,
    ArtifactError,
    Deadline,
    check_model_layout,
    check_sha256,
    confined_path,
    copy_verified,
    manifest_bytes,
    parse_json,
    plan_model_fetch,
    read_bounded,
    validate_manifest,
    verify_pinned,
)

_URL_RE = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$")


def _open(url, timeout):
    """The response of a GET of url (a function of its own so that tests may replace it)."""
    return open_url(url, timeout=timeout, follow_redirects="none", http_agent="gpufleet-artifact-fetch")


def _get(url, params, deadline):
    deadline.check(url)
    try:
        return _open(url, params["timeout"])
    except Exception as exc:  # urllib and socket errors of every kind: a message, never a traceback
        raise ArtifactError("cannot fetch %s: %s" % (url, getattr(exc, "reason", None) or exc)) from exc


def _fetch_bytes(url, limit, params, deadline):
    response = _get(url, params, deadline)
    try:
        return read_bounded(response, limit, deadline, url)
    except OSError as exc:
        raise ArtifactError("reading %s failed: %s" % (url, exc)) from exc
    finally:
        response.close()


class Writer:
    """Writes files and directories with the module's ownership and modes, tracking change."""

    def __init__(self, module):
        self.module = module
        self.changed = False
        group = module.params["group"]
        self.gid = grp.getgrnam(group).gr_gid if group else -1
        self.file_mode = 0o640 if group else 0o644
        self.dir_mode = 0o750 if group else 0o755

    def attributes(self, path, mode):
        info = os.lstat(path)
        if stat.S_IMODE(info.st_mode) != mode:
            if not self.module.check_mode:
                os.chmod(path, mode)
            self.changed = True
        if self.gid not in (-1, info.st_gid):
            if not self.module.check_mode:
                os.chown(path, -1, self.gid)
            self.changed = True

    def directory(self, path):
        if not os.path.isdir(path):
            if os.path.lexists(path):
                raise ArtifactError("%s is in the way of a directory" % path)
            self.changed = True
            if self.module.check_mode:
                return
            os.makedirs(path)
        self.attributes(path, self.dir_mode)

    def content(self, path, data):
        """Write data to path atomically, unless path already holds it."""
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ArtifactError("%s is in the way and is not a regular file" % path)
        if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) == len(data):
            with open(path, "rb") as handle:
                if handle.read() == data:
                    self.attributes(path, self.file_mode)
                    return False
        self.changed = True
        if self.module.check_mode:
            return True
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gpufleet-tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            self._finish(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return True

    def stream(self, path, response, entry, deadline, what):
        """Stream response into a temporary file beside path; moved into place only once verified."""
        self.changed = True
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gpufleet-tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                copy_verified(response, handle, entry, deadline, what)
            self._finish(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def _finish(self, tmp, path):
        os.chmod(tmp, self.file_mode)
        if self.gid != -1:
            os.chown(tmp, -1, self.gid)
        os.replace(tmp, path)


def _check_params(params):
    url = params["url"]
    if not isinstance(url, str) or len(url) > 2048 or not _URL_RE.match(url):
        raise ArtifactError("url must be an http(s) URL of at most 2048 characters without whitespace or control characters, not %r" % (url,))
    check_sha256(params["sha256"], "sha256 (the pin of the run that filled the cache)")
    for name, low, high in (("max_size", 1, MAX_JSON_BYTES), ("timeout", 1, 3600), ("deadline", 1, 7 * 86400)):
        if not low <= params[name] <= high:
            raise ArtifactError("%s must be from %d to %d, not %d" % (name, low, high, params[name]))
    if not os.path.isabs(params["dest"]):
        raise ArtifactError("dest must be an absolute path, not %r" % params["dest"])
    if params["group"] is not None:
        try:
            grp.getgrnam(params["group"])
        except KeyError as exc:
            raise ArtifactError("group %r does not exist on this host" % params["group"]) from exc


def fetch_file(module, writer, deadline):
    params = module.params
    raw = _fetch_bytes(params["url"], params["max_size"], params, deadline)
    verify_pinned(raw, params["sha256"], params["url"])
    parent = os.path.dirname(params["dest"])
    if not os.path.isdir(parent):
        raise ArtifactError("the directory of dest, %s, does not exist" % parent)
    written = writer.content(params["dest"], raw)
    return {"fetched": [os.path.basename(params["dest"])] if written else [], "files": 1, "bytes": len(raw)}


def fetch_model(module, writer, deadline):
    params = module.params
    base = params["url"].rstrip("/")
    dest = params["dest"].rstrip("/") or "/"
    manifest_url = base + ".manifest.json"
    raw = _fetch_bytes(manifest_url, MAX_JSON_BYTES, params, deadline)
    verify_pinned(raw, params["sha256"], "the model manifest %s" % manifest_url)
    manifest = validate_manifest(parse_json(raw, manifest_url), "model", require_sha256=True, what=manifest_url)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise ArtifactError("%s is in the way of the model directory and is not a directory" % dest)
    # Every name is checked (and confined) before anything is written.
    wanted = plan_model_fetch(dest, manifest, params["hash_files"])
    writer.directory(dest)
    fetched = []
    for name, _path, entry in wanted:
        fetched.append(name)
        if module.check_mode:
            continue
        for parent in _parents(dest, name):
            writer.directory(parent)
        # Confined again now that the directories exist (a link could have been placed meanwhile).
        path = confined_path(dest, name)
        url = "%s/%s" % (base, urllib.parse.quote(name))
        response = _get(url, params, deadline)
        try:
            writer.stream(path, response, entry, deadline, "%s (%s)" % (name, url))
        except OSError as exc:
            raise ArtifactError("%s: writing %s failed: %s" % (name, path, exc)) from exc
        finally:
            response.close()
    if not module.check_mode:
        for name in manifest["files"]:
            path = confined_path(dest, name)
            for parent in _parents(dest, name):
                writer.attributes(parent, writer.dir_mode)
            writer.attributes(path, writer.file_mode)
        problems = check_model_layout(dest)
        if problems:
            raise ArtifactError("%s does not hold a sound model after the fetch: %s" % (dest, "; ".join(problems[:20])))
        writer.content(params["manifest_dest"] or dest + ".manifest.json", raw)
    return {"fetched": fetched, "files": len(manifest["files"]), "bytes": manifest_bytes(manifest)}


def _parents(dest, name):
    """The directories between dest and the file name, outermost first."""
    parts = name.split("/")[:-1]
    return [os.path.join(dest, *parts[: i + 1]) for i in range(len(parts))]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            kind=dict(type="str", required=True, choices=["file", "model"]),
            dest=dict(type="path", required=True),
            sha256=dict(type="str", required=True),
            manifest_dest=dict(type="path"),
            group=dict(type="str"),
            max_size=dict(type="int", default=16777216),
            timeout=dict(type="int", default=60),
            deadline=dict(type="int", default=7200),
            hash_files=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    what = "artifact_fetch of %s" % module.params["url"]
    try:
        _check_params(module.params)
        writer = Writer(module)
        deadline = Deadline(module.params["deadline"])
        if module.params["kind"] == "file":
            result = fetch_file(module, writer, deadline)
        else:
            result = fetch_model(module, writer, deadline)
    except (ArtifactError, OSError) as exc:
        module.fail_json(msg="%s: %s" % (what, exc))
    except Exception as exc:  # any other failure is reported, never a traceback
        module.fail_json(msg="%s failed unexpectedly (%s: %s)" % (what, type(exc).__name__, exc))
    module.exit_json(changed=writer.changed, **result)


if __name__ == "__main__":
    main()
