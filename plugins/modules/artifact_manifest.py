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
problems:
  description: What differs from the manifest (the module fails when any).
  returned: failure
  type: list
  elements: str
  sample: ["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl: sha256 differs from the manifest"]
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils.artifact_cache import (
    ArtifactError,
    build_manifest,
    check_files,
    check_model_layout,
    manifest_bytes,
    manifest_from_hub_listing,
    requirements_lock,
    simple_index,
)


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def _write(module, path, content):
    """Write content to path atomically; True when it changed."""
    if os.path.isfile(path):
        with open(path) as handle:
            if handle.read() == content:
                return False
    if module.check_mode:
        return True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)
    return True


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
    params = module.params
    changed = False
    created = False
    try:
        if params["hub_listing"]:
            manifest = manifest_from_hub_listing(_read_json(params["hub_listing"]), params["patterns"])
            changed |= _write(module, params["manifest"], json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        elif os.path.isfile(params["manifest"]):
            manifest = _read_json(params["manifest"])
        elif params["create"]:
            manifest = build_manifest(params["path"], params["kind"], params["requirements"])
            changed |= _write(module, params["manifest"], json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            created = True
        else:
            module.fail_json(msg="%s does not exist (and create is false)" % params["manifest"])
        if manifest.get("kind") != params["kind"]:
            module.fail_json(msg="%s is a manifest of %s, not %s" % (params["manifest"], manifest.get("kind"), params["kind"]))
        problems = [] if created else check_files(params["path"], manifest, params["hash_files"])
        if params["kind"] == "model":
            problems += check_model_layout(params["path"])
        if problems:
            module.fail_json(
                msg="%s does not match %s: %s" % (params["path"], params["manifest"], "; ".join(problems[:20])),
                problems=problems,
            )
        if params["kind"] == "wheels" and params["index_dir"]:
            changed |= _write(module, os.path.join(params["index_dir"], "requirements.txt"), requirements_lock(manifest))
            for rel, page in sorted(simple_index(manifest, params["wheels_url"]).items()):
                changed |= _write(module, os.path.join(params["index_dir"], "simple", rel), page)
    except (ArtifactError, OSError, ValueError, KeyError) as exc:
        module.fail_json(msg="%s: %s" % (params["path"], exc))
    module.exit_json(
        changed=changed,
        created=created,
        files=len(manifest["files"]),
        bytes=manifest_bytes(manifest),
        manifest_requirements=manifest.get("requirements", []),
    )


if __name__ == "__main__":
    main()
