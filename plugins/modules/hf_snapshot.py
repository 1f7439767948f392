#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_snapshot
short_description: Download one revision of a Hugging Face repository into a directory, once
version_added: 0.3.0
description:
  - Downloads the files of O(repo_id) at O(revision) into O(dest) with C(huggingface_hub)'s C(snapshot_download), then
    writes the file O(stamp) in O(dest) (C(<repo_id>@<revision>)). When the stamp is there the module does nothing, so a
    finished download is not repeated; an interrupted one has no stamp and is resumed the next time.
  - The download runs in a child process that is stopped after O(timeout) seconds.
  - The hub client reads its settings from the environment as usual (C(HF_TOKEN), C(HF_ENDPOINT), C(HF_HUB_OFFLINE),
    C(HF_HUB_DISABLE_TELEMETRY)); set them with the task's C(environment).
  - Give O(python) the Python of a virtualenv that has C(huggingface_hub).
author: gpufleet.serving contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
  - gpufleet.serving.venv_python
options:
  repo_id:
    description: The repository, C([namespace/]name).
    type: str
    required: true
  revision:
    description: A branch, tag or commit of it.
    type: str
    default: main
  dest:
    description:
      - The directory the files are written to; its parent directory must exist.
      - An absolute, normalised path; when it exists it must be a directory, not a link.
    type: str
    required: true
  patterns:
    description:
      - Shell patterns of the files to fetch (C(allow_patterns) of C(snapshot_download)); every file when left out.
      - An empty list fetches no file.
    type: list
    elements: str
  stamp:
    description: The name of the file, in O(dest), that marks a finished download.
    type: str
    default: .gpufleet-complete
  timeout:
    description: Seconds the download may take before it is stopped and the module fails (at most a week).
    type: float
    default: 21600
requirements:
  - huggingface_hub (in the Python that runs the module)
"""

EXAMPLES = r"""
- name: Download the model from the hub once
  gpufleet.serving.hf_snapshot:
    repo_id: Qwen/Qwen2.5-0.5B-Instruct
    revision: main
    dest: /var/lib/vllm/models/Qwen2.5-0.5B-Instruct
    python: /opt/vllm/venv/bin/python
  environment:
    HF_TOKEN: "{{ hf_token }}"
    HF_HUB_DISABLE_TELEMETRY: "1"
  no_log: true
"""

RETURN = r"""
dest:
  description: The directory the files are in.
  returned: always
  type: str
  sample: /var/lib/vllm/models/Qwen2.5-0.5B-Instruct
stamp:
  description: The path of the stamp file.
  returned: always
  type: str
  sample: /var/lib/vllm/models/Qwen2.5-0.5B-Instruct/.gpufleet-complete
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot
from ansible_collections.gpufleet.serving.plugins.module_utils.child_call import ChildError, call_in_child
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError
from ansible_collections.gpufleet.serving.plugins.module_utils.python_package import check_interpreter

try:
    from huggingface_hub import snapshot_download
except ImportError as exc:
    HUB_IMPORT_ERROR = str(exc)
    snapshot_download = None
else:
    HUB_IMPORT_ERROR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repo_id=dict(type="str", required=True),
            revision=dict(type="str", default="main"),
            dest=dict(type="str", required=True),
            patterns=dict(type="list", elements="str"),
            stamp=dict(type="str", default=".gpufleet-complete"),
            timeout=dict(type="float", default=21600),
            python=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    dest = params["dest"]
    result = dict(changed=False, dest=dest, stamp="%s/%s" % (dest, params["stamp"]))
    try:
        check_interpreter(params["python"])
        hf_snapshot.check_inputs(params)
        done = hf_snapshot.stamp_state(dest, params["stamp"], module.check_mode)
    except InputError as exc:
        module.fail_json(msg=str(exc), **result)
    if done:
        module.exit_json(**result)
    result["changed"] = True
    if not module.check_mode:
        if snapshot_download is None:
            module.fail_json(msg="%s (%s)" % (missing_required_lib("huggingface_hub"), HUB_IMPORT_ERROR), **result)
        try:
            call_in_child(lambda: hf_snapshot.download(snapshot_download, params), params["timeout"])
        except ChildError as exc:
            module.fail_json(msg="downloading %s@%s into %s failed: %s" % (params["repo_id"], params["revision"], dest, exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
