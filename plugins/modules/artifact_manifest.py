#!/usr/bin/python
# Copyright: (c) 2025, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: artifact_manifest
short_description: Record, check and publish the fleet's cached wheels and model files
version_added: 0.2.0
description:
  - Checks a directory of wheels or of model files against a manifest (size and sha256 of every file).
  - When the manifest does not exist yet and O(create=true), records it from the files (the first fetch).
  - For a model, checks the safetensors files against their own headers and C(model.safetensors.index.json)
    (weight map and total size), and may check them against the repository listing of the Hugging Face API.
  - For wheels, may write a PEP 503 simple index and a hash-pinned requirements file that the fleet installs
    with C(pip --require-hashes).
  - Fails, naming every file that differs, when the files do not match.
  - File names must stay inside O(path) (no C(..), no absolute path, no whitespace or control character, no
    symbolic link out of it); wheel names must be PEP 427 names. A model manifest that was not made from a hub
    listing must give the sha256 of every file; one made from a listing gets the sha256 of the files the listing
    gives only a size for, hashed here after their sizes matched.
  - Returns the sha256 of the manifest and of the requirements file as written, for the fleet to pin
    (the C(gpufleet.serving.artifact_fetch) module refuses anything the cache serves that differs from them).
options:
  path:
    description: Directory holding the wheels (directly in it) or the model.
    type: path
    required: true
  kind:
    description: What the directory holds.
    type: str
    choices: [wheels, model]
    required: true
  manifest:
    description: The manifest file (JSON) on the host the module runs on.
    type: path
    required: true
  create:
    description: Record the manifest from the files when it does not exist yet.
    type: bool
    default: false
  requirements:
    description: The requirements the wheels were fetched for, recorded in a new manifest.
    type: list
    elements: str
    default: []
  hub_listing:
    description:
      - A Hugging Face model listing (JSON of C(/api/models/<repo>/revision/<revision>?blobs=true)).
      - The manifest is then written from it (sizes, and sha256 of LFS files) and the files are checked against it.
    type: path
  patterns:
    description: With O(hub_listing), only the files whose names match one of these shell patterns.
    type: list
    elements: str
  hash_files:
    description: Compare sha256 of every file, not only sizes.
    type: bool
    default: true
  index_dir:
    description: With O(kind=wheels), write C(simple/) (PEP 503) and C(requirements.txt) into this directory.
    type: path
  wheels_url:
    description: Where the index pages link the wheel files to (relative to a project page, or absolute).
    type: str
    default: ../../wheels/
author:
  - gpufleet.serving contributors (@gpufleet)
"""

EXAMPLES = r"""
- name: Record the wheels fetched for the fleet, or check them against their manifest
  gpufleet.serving.artifact_manifest:
    path: /srv/gpufleet-cache/pip/wheels
    kind: wheels
    manifest: /srv/gpufleet-cache/pip/manifest.json
    create: true
    requirements: ["vllm==0.33.0"]
    index_dir: /srv/gpufleet-cache/pip

- name: Check a model against its repository listing
  gpufleet.serving.artifact_manifest:
    path: /srv/gpufleet-cache/models/llama
    kind: model
    manifest: /srv/gpufleet-cache/models/llama.manifest.json
    hub_listing: /srv/gpufleet-cache/models/llama.listing.json
"""

RETURN = r"""
files:
  description: Number of files in the manifest.
  returned: success
  type: int
  sample: 151
bytes:
  description: Total size of the files in the manifest.
  returned: success
  type: int
  sample: 961413120
created:
  description: Whether the manifest was recorded by this run.
  returned: success
  type: bool
  sample: false
manifest_requirements:
  description: The requirements recorded in the manifest (wheels).
  returned: success
  type: list
  elements: str
  sample: ["vllm==0.33.0"]
manifest_sha256:
  description: The sha256 of the manifest file as the cache serves it.
  returned: success
  type: str
  sample: 9f2c4e0d1c8e5b7a6f3d2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a
requirements_sha256:
  description: The sha256 of the requirements file written into O(index_dir) (wheels with O(index_dir)); empty otherwise.
  returned: success
  type: str
  sample: 3b1f0c2d4e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c
problems:
  description: What differs from the manifest (the module fails when any).
  returned: failure
  type: list
  elements: str
  sample: ["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl: sha256 differs from the manifest"]
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils.artifact_cache import (
    ArtifactError,
    build_manifest,
    check_files,
    check_model_layout,
    fill_sha256,
    manifest_bytes,
    manifest_from_hub_listing,
    manifest_text,
    read_json,
    requirements_lock,
    sha256_bytes,
    simple_index,
    validate_manifest,
)


def _write(module, path, content):
    """Write content to path atomically; True when it changed."""
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as handle:
            if handle.read(len(content.encode()) + 1) == content.encode():
                return False
    if module.check_mode:
        return True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    module.atomic_move(tmp, path)
    return True


def _manifest(module, params):
    """(manifest, its text, created) after every file was checked against it; ArtifactError otherwise."""
    if params["hub_listing"]:
        listing = read_json(params["hub_listing"], "hub_listing")
        manifest = manifest_from_hub_listing(listing, params["patterns"])
        problems = check_files(params["path"], manifest, params["hash_files"])
        if problems:
            return manifest, None, problems
        manifest = fill_sha256(params["path"], manifest)
        return manifest, manifest_text(manifest), []
    if os.path.lexists(params["manifest"]):
        manifest = validate_manifest(
            read_json(params["manifest"], "manifest"), params["kind"], require_sha256=params["kind"] == "model", what=params["manifest"]
        )
        with open(params["manifest"], "rb") as handle:
            text = handle.read().decode("utf-8")
        return manifest, text, check_files(params["path"], manifest, params["hash_files"])
    if not params["create"]:
        raise ArtifactError("the manifest %s does not exist (and create is false)" % params["manifest"])
    manifest = build_manifest(params["path"], params["kind"], params["requirements"])
    return manifest, manifest_text(manifest), []


def run(module):
    params = module.params
    if not os.path.isdir(params["path"]):
        raise ArtifactError("%s is not a directory" % params["path"])
    if params["hub_listing"] and params["kind"] != "model":
        raise ArtifactError("hub_listing describes a model: use it with kind=model")
    created = not params["hub_listing"] and not os.path.lexists(params["manifest"])
    manifest, text, problems = _manifest(module, params)
    if params["kind"] == "model":
        problems += check_model_layout(params["path"])
    if problems:
        module.fail_json(
            msg="%s does not match %s: %s" % (params["path"], params["manifest"], "; ".join(problems[:20])),
            problems=problems,
        )
    changed = False
    if params["hub_listing"] or created:
        changed |= _write(module, params["manifest"], text)
    requirements_sha256 = ""
    if params["kind"] == "wheels" and params["index_dir"]:
        lock = requirements_lock(manifest)
        requirements_sha256 = sha256_bytes(lock.encode())
        changed |= _write(module, os.path.join(params["index_dir"], "requirements.txt"), lock)
        for rel, page in sorted(simple_index(manifest, params["wheels_url"]).items()):
            changed |= _write(module, os.path.join(params["index_dir"], "simple", rel), page)
    module.exit_json(
        changed=changed,
        created=created,
        files=len(manifest["files"]),
        bytes=manifest_bytes(manifest),
        manifest_requirements=manifest.get("requirements", []),
        manifest_sha256=sha256_bytes(text.encode()),
        requirements_sha256=requirements_sha256,
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            kind=dict(type="str", required=True, choices=["wheels", "model"]),
            manifest=dict(type="path", required=True),
            create=dict(type="bool", default=False),
            requirements=dict(type="list", elements="str", default=[]),
            hub_listing=dict(type="path"),
            patterns=dict(type="list", elements="str"),
            hash_files=dict(type="bool", default=True),
            index_dir=dict(type="path"),
            wheels_url=dict(type="str", default="../../wheels/"),
        ),
        supports_check_mode=True,
    )
    try:
        run(module)
    except (ArtifactError, OSError, UnicodeDecodeError) as exc:
        module.fail_json(msg="artifact_manifest of %s: %s" % (module.params["path"], exc))
    except Exception as exc:  # any other failure is reported, never a traceback
        module.fail_json(msg="artifact_manifest of %s failed unexpectedly (%s: %s)" % (module.params["path"], type(exc).__name__, exc))


if __name__ == "__main__":
    main()
