#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_instances
short_description: Report the vLLM instances of a host, which run an old configuration, and their load
version_added: 0.1.0
description:
  - Reads the state of the C(vllm@<name>) units the C(gpufleet.serving.vllm) role installs, without changing anything.
  - An instance is B(stale) when a variable of its environment file (C(<config_dir>/<name>.env)) differs from the
    environment its running process started with (C(/proc/<pid>/environ)). The vllm role writes its arguments, the
    checksum of the unit file and the vLLM package into that file, so a stale instance runs something other than what
    the files now say, and needs a restart; this holds even when an earlier run was interrupted after writing them.
  - With O(metrics=true) it also reads each active instance's running and waiting requests from its C(/metrics)
    (vLLM's Prometheus counters C(vllm:num_requests_running) and C(vllm:num_requests_waiting)), so that a task can
    wait until a drained instance is idle.
author: gpufleet.serving contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
options:
  names:
    description:
      - The instances to report (V(0), V(1), V(main) ...). By default every instance with an environment file in
        O(config_dir).
    type: list
    elements: str
    default: []
  config_dir:
    description: Directory of the instances' environment files.
    type: path
    default: /etc/vllm
  metrics:
    description: Also read the running and waiting requests of each active instance from C(http://127.0.0.1:<port>/metrics).
    type: bool
    default: false
  metrics_timeout:
    description: Seconds to wait for each C(/metrics) answer.
    type: float
    default: 5
notes:
  - Reading another user's C(/proc/<pid>/environ) needs root (C(become)).
"""

EXAMPLES = r"""
- name: Find the instances that run an old configuration
  gpufleet.serving.vllm_instances:
  register: vllm_status

- name: Restart them
  ansible.builtin.systemd_service:
    name: "vllm@{{ item }}.service"
    state: restarted
  loop: "{{ vllm_status.stale }}"

- name: Wait until instance 0 has no request left
  gpufleet.serving.vllm_instances:
    names: ["0"]
    metrics: true
  register: idle
  until: idle.busy == 0
  retries: 30
  delay: 2
"""

RETURN = r"""
instances:
  description: One entry per instance, in the order of O(names) (else sorted by name).
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: The instance name., type: str, sample: "0"}
    unit: {description: The systemd unit., type: str, sample: vllm@0.service}
    active_state: {description: systemd's ActiveState., type: str, sample: active}
    sub_state: {description: systemd's SubState., type: str, sample: running}
    result:
      description:
        - systemd's Result.
        - A unit stopped by its start limit is V(failed) in RV(instances[].active_state); systemd 252 keeps the result of its last run
          here (such as V(exit-code)), and its journal says C(Start request repeated too quickly).
      type: str
      sample: success
    main_pid: {description: PID of the server process (0 when none)., type: int, sample: 4242}
    restarts: {description: Automatic restarts since the unit was last started by hand (NRestarts)., type: int, sample: 0}
    started_at: {description: When the running process started (ExecMainStartTimestamp)., type: str}
    configured: {description: Whether the instance has an environment file., type: bool}
    port: {description: The instance's port (GPUFLEET_PORT of its environment file)., type: int, sample: 8001}
    package: {description: The vLLM package its configuration was written for (GPUFLEET_VLLM_PACKAGE)., type: str, sample: vllm==0.33.0}
    stale: {description: Whether the running process started with other values than its environment file has now., type: bool}
    stale_keys: {description: The variables that differ., type: list, elements: str, sample: [GPUFLEET_VLLM_ARGS]}
    requests_running: {description: Requests being processed (with O(metrics); null when unreadable)., type: float}
    requests_waiting: {description: Requests queued (with O(metrics); null when unreadable)., type: float}
stale:
  description: Names of the stale instances.
  returned: always
  type: list
  elements: str
inactive:
  description: Names of the instances whose unit is not active.
  returned: always
  type: list
  elements: str
failed:
  description: Names of the instances whose unit has failed.
  returned: always
  type: list
  elements: str
busy:
  description: Running plus waiting requests over the instances (with O(metrics)).
  returned: always
  type: int
"""

import math
import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import open_url
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_instances
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, regular_file


def read(path, mode="r"):
    """A regular file's content (at most MAX_FILE_BYTES), None when it is missing or unreadable."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, mode) as f:
            return f.read(vllm_instances.MAX_FILE_BYTES)
    except OSError:
        return None


def check_env_file(config_dir, name):
    """None when the instance's environment file is absent, a regular file or readable; else the message naming it."""
    path = os.path.join(config_dir, "%s.env" % name)
    if not os.path.lexists(path):
        return None
    try:
        regular_file(path, vllm_instances.MAX_FILE_BYTES, "config_dir: the environment file")
    except InputError as exc:
        return "%s; remove it (the vllm role writes it again)" % exc
    return None


def check_params(module):
    """Fail, naming the parameter, on a timeout, an instance name or a config_dir this module does not take."""
    config_dir = module.params["config_dir"]
    names = module.params["names"]
    timeout = module.params["metrics_timeout"]
    if not math.isfinite(timeout) or not 0 < timeout <= vllm_instances.MAX_TIMEOUT:
        module.fail_json(msg="metrics_timeout must be a number of seconds above 0 and at most %d, not %r" % (vllm_instances.MAX_TIMEOUT, timeout))
    if len(names) > vllm_instances.MAX_INSTANCES:
        module.fail_json(msg="names lists %d instances, more than %d" % (len(names), vllm_instances.MAX_INSTANCES))
    for name in names:
        if not vllm_instances.NAME_RE.match(name):
            module.fail_json(msg="names: %r is not an instance name (1-32 letters, digits, _ or -, as in vllm@<name>)" % name)
    if os.path.lexists(config_dir) and not os.path.isdir(config_dir):
        module.fail_json(msg="config_dir %s is not a directory; point config_dir at the instances' environment files (/etc/vllm)" % config_dir)


def configured_names(config_dir):
    """The instances that have an environment file in config_dir (at most MAX_INSTANCES, valid names only)."""
    try:
        found = sorted(f[: -len(".env")] for f in os.listdir(config_dir) if f.endswith(".env"))
    except OSError:
        found = []
    return [name for name in found if vllm_instances.NAME_RE.match(name)][: vllm_instances.MAX_INSTANCES]


def request_counts(status, timeout):
    """The requests running and waiting from the instance's /metrics; null counts when it is not active or does not answer."""
    counts = {"running": None, "waiting": None}
    if status["port"] and status["active_state"] == "active":
        try:
            resp = open_url("http://127.0.0.1:%d/metrics" % status["port"], timeout=timeout)
            counts = vllm_instances.parse_metrics(to_text(resp.read(vllm_instances.MAX_FILE_BYTES)))
        except Exception:  # pylint: disable=broad-except
            pass  # an instance that does not answer reports null counts
    return counts


def one_status(module, systemctl, config_dir, name):
    """The state of vllm@<name>: systemd's view, its environment file against the running process's."""
    unit = "vllm@%s.service" % name
    rc, out, err = module.run_command([systemctl, "show", unit, "-p", ",".join(vllm_instances.SHOW_PROPERTIES)])
    if rc != 0:
        module.fail_json(msg="systemctl show %s failed: %s" % (unit, err.strip()))
    show = vllm_instances.parse_show(out)
    pid = int(show["MainPID"]) if show.get("MainPID", "").isdigit() else 0
    raw = read("/proc/%d/environ" % pid, "rb") if pid else None
    environ = vllm_instances.parse_environ(raw) if raw is not None else None
    status = vllm_instances.instance_status(name, show, read(os.path.join(config_dir, "%s.env" % name)), environ)
    if module.params["metrics"]:
        counts = request_counts(status, module.params["metrics_timeout"])
        status["requests_running"] = counts["running"]
        status["requests_waiting"] = counts["waiting"]
    return status


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", default=[]),
            config_dir=dict(type="path", default="/etc/vllm"),
            metrics=dict(type="bool", default=False),
            metrics_timeout=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    check_params(module)
    config_dir = module.params["config_dir"]
    names = module.params["names"] or configured_names(config_dir)
    for name in names:
        problem = check_env_file(config_dir, name)
        if problem:
            module.fail_json(msg=problem)
    systemctl = module.get_bin_path("systemctl", required=True)
    statuses = [one_status(module, systemctl, config_dir, name) for name in names]
    module.exit_json(changed=False, instances=statuses, **vllm_instances.summarize(statuses))


if __name__ == "__main__":
    main()
