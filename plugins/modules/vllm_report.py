#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_report
short_description: Check what each running vLLM instance reports (KV-cache tokens, maximum concurrency) against its plan
version_added: 0.1.0
description:
  - For each instance of O(plan), reads what vLLM logged at start-up in the journal of the instance's current run
    (C(GPU KV cache size) and C(Maximum concurrency for N tokens per request)), or else the C(vllm:cache_config_info)
    labels of its C(/metrics), and puts them beside the plan's C(kv_tokens_per_instance) and C(max_concurrency).
  - A report more than O(tolerance_pct) percent below the plan is a warning naming both figures. A start that failed
    because the model or its KV cache does not fit fails the task, quoting vLLM's own words.
  - With O(record), writes the plan and the check (key C(check)) to that file, changing it only when the content differs.
author: gpufleet.serving contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
  - ansible.builtin.files
options:
  plan:
    description: The plan the host runs (the C(gpufleet_plan) of the C(gpufleet.serving.plan) role).
    type: dict
    required: true
  tolerance_pct:
    description: How far below the plan, in percent, vLLM's KV-cache tokens may be before a warning.
    type: float
    default: 10
  metrics:
    description: Read C(/metrics) when the journal has no figure.
    type: bool
    default: true
  metrics_timeout:
    description: Seconds to wait for each C(/metrics) answer.
    type: float
    default: 5
  fail_on_failure:
    description: Fail when an instance's journal says that the model does not fit.
    type: bool
    default: true
  record:
    description: A file to write the plan and the check to (JSON), such as C(/etc/vllm/plan.json). Nothing is written when empty.
    type: path
notes:
  - Reading another unit's journal needs root (C(become)) or membership of C(systemd-journal).
"""

EXAMPLES = r"""
- name: Check vLLM's own figures against the plan
  gpufleet.serving.vllm_report:
    plan: "{{ gpufleet_plan }}"
    record: /etc/vllm/plan.json
    owner: root
    group: vllm
    mode: "0640"
  register: vllm_check
"""

RETURN = r"""
check:
  description: The plan's figures beside vLLM's, per instance.
  returned: always
  type: dict
  contains:
    instances:
      description: One entry per instance.
      type: list
      elements: dict
      sample:
        - {name: "0", predicted_kv_tokens: 384388, reported_kv_tokens: 383728, predicted_max_concurrency: 750.76,
           reported_max_concurrency: 749.47, source: journal, ratio: 0.9983, status: ok}
    warnings:
      description: Reports below the plan by more than O(tolerance_pct), and instances with no report.
      type: list
      elements: str
    failures:
      description: vLLM's words for each instance that did not start for memory.
      type: list
      elements: str
    tolerance_pct:
      description: The tolerance used.
      type: float
summary:
  description: One line per instance, for the play output.
  returned: always
  type: list
  elements: str
"""

import json
import math
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.module_utils.urls import open_url
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_report
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, read_bytes, writable_target


def journal_of_current_run(module, name):
    """The journal lines of the unit's current (or last) invocation; '' when unreadable."""
    systemctl = module.get_bin_path("systemctl", required=True)
    journalctl = module.get_bin_path("journalctl", required=True)
    rc, out, _err = module.run_command([systemctl, "show", "vllm@%s.service" % name, "-p", "InvocationID", "--value"])
    invocation = out.strip() if rc == 0 else ""
    if invocation and all(c in "0123456789abcdef" for c in invocation):
        argv = [journalctl, "_SYSTEMD_INVOCATION_ID=%s" % invocation, "-o", "cat", "--no-pager"]
    else:
        argv = [journalctl, "-u", "vllm@%s.service" % name, "-b", "-o", "cat", "--no-pager", "-n", "5000"]
    rc, out, _err = module.run_command(argv)
    return out if rc == 0 else ""


def metrics_of(module, port):
    try:
        resp = open_url("http://127.0.0.1:%d/metrics" % port, timeout=module.params["metrics_timeout"])
        return to_text(resp.read(vllm_report.MAX_METRICS_BYTES))
    except Exception:  # pylint: disable=broad-except
        return None  # an instance that does not answer has no metrics


def write_record(module, path, content):
    """Write ``content`` to ``path`` when it differs; returns whether it changed."""
    data = to_bytes(json.dumps(content, indent=4, sort_keys=True) + "\n")
    try:
        same = os.path.exists(path) and read_bytes(path, vllm_report.MAX_RECORD_BYTES, "record") == data
    except InputError:
        same = False
    changed = not same
    if changed and not module.check_mode:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        module.atomic_move(tmp, path)
    file_args = module.load_file_common_arguments(module.params, path=path)
    if not module.check_mode or os.path.exists(path):
        changed = module.set_fs_attributes_if_different(file_args, changed)
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="dict", required=True),
            tolerance_pct=dict(type="float", default=vllm_report.DEFAULT_TOLERANCE_PCT),
            metrics=dict(type="bool", default=True),
            metrics_timeout=dict(type="float", default=5),
            fail_on_failure=dict(type="bool", default=True),
            record=dict(type="path"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    plan = module.params["plan"]
    problem = vllm_report.check_plan(plan)
    if problem:
        module.fail_json(msg=problem)
    instances = plan["instances"]
    if not math.isfinite(module.params["tolerance_pct"]) or not 0 <= module.params["tolerance_pct"] < 100:
        module.fail_json(msg="tolerance_pct must be a percentage from 0 to below 100, not %s" % module.params["tolerance_pct"])
    timeout = module.params["metrics_timeout"]
    if not math.isfinite(timeout) or not 0 < timeout <= vllm_report.MAX_TIMEOUT:
        module.fail_json(msg="metrics_timeout must be a number of seconds above 0 and at most %d, not %r" % (vllm_report.MAX_TIMEOUT, timeout))
    if module.params["record"]:
        try:
            writable_target(module.params["record"], "record", vllm_report.MAX_RECORD_BYTES)
        except InputError as exc:
            module.fail_json(msg="%s; choose another record path" % exc)
    reports = {}
    for instance in instances:
        log = journal_of_current_run(module, instance["name"])
        metrics = None
        if module.params["metrics"] and not vllm_report.parse_log(log)["kv_cache_tokens"]:
            metrics = metrics_of(module, int(instance["port"]))
        reports[instance["name"]] = vllm_report.reported(log, metrics)
    check = vllm_report.compare(plan, reports, module.params["tolerance_pct"])
    summary = vllm_report.summary(check)
    for text in check["warnings"]:
        module.warn(text)
    if check["failures"] and module.params["fail_on_failure"]:
        module.fail_json(msg="; ".join(check["failures"]), check=check, summary=summary)
    changed = False
    if module.params["record"]:
        changed = write_record(module, module.params["record"], vllm_report.record(plan, check))
    module.exit_json(changed=changed, check=check, summary=summary)


if __name__ == "__main__":
    main()
