# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.monitoring_layout import MonitoringError, fleet, prometheus_config

DOCUMENTATION = r"""
name: monitoring_prometheus
short_description: Prometheus's configuration for the fleet, from the inventory and the plans
version_added: 0.4.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - For the monitoring role. One scrape job per kind of target - C(node) on every host of O(_input), C(nginx) and
    C(mtail) on the hosts of O(nginx_hosts), C(dcgm) on GPU servers whose plan runs on CUDA, C(vllm) for every instance
    of every plan (through the server tier's metrics port, path C(/metrics/<instance>)), and Prometheus and
    Alertmanager themselves - each target labelled C(server) (its inventory name) and vLLM's C(vllm_instance).
  - A host is dialled at its C(monitoring_address), else its C(gateway_address), else its inventory name; only these
    two variables are read from O(hostvars).
  - Fails naming the host or the variable when a name, an address, a plan or a setting cannot be used.
positional: _input, hostvars, nginx_hosts, server_hosts, plans_read, monitor, settings
options:
  _input:
    description: Every inventory host to watch.
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) mapping.
    type: dict
    required: true
  nginx_hosts:
    description: The hosts that run the gateway role's nginx.
    type: list
    elements: str
    required: true
  server_hosts:
    description: The GPU servers. The plan of each is its C(_monitoring_plan) in O(hostvars) (the role sets it on
      the servers of the run), else the plan file read from it in O(plans_read).
    type: list
    elements: str
    required: true
  plans_read:
    description: The results of the role's C(slurp) of the plan file of the servers outside the run (C(item) the
      server, C(content) the file in base64; none when it could not be read).
    type: list
    elements: dict
    required: true
  monitor:
    description: The inventory name of the monitoring host the configuration is for.
    type: str
    required: true
  settings:
    description: C(scrape_interval) (a Prometheus duration), C(rules_glob), C(prometheus_listen), C(alertmanager_listen) (ADDRESS:PORT).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Write Prometheus's configuration
  ansible.builtin.copy:
    content: >-
      {{ (groups['all'] | gpufleet.serving.monitoring_prometheus(hostvars, groups['gateways'], groups['gpu_servers'], [],
          inventory_hostname,
          {'scrape_interval': '15s', 'rules_glob': '/etc/prometheus/rules/*.yml'}))['config'] | to_nice_yaml }}
    dest: /etc/prometheus/prometheus.yml
    mode: "0644"
"""

RETURN = r"""
_value:
  description: C(config), the content of prometheus.yml as data, and C(unknown_plans), the GPU servers whose plan
    could not be read (their vLLM targets are left out).
  type: dict
"""

_HOST_KEYS = ("monitoring_address", "gateway_address")


def _plans(hostvars, server_hosts, plans_read):
    """GPU server -> its plan (a dict or JSON text), or None when it is not known."""
    read = {}
    for result in plans_read:
        if isinstance(result, Mapping) and isinstance(result.get("content"), str):
            try:
                read[result.get("item")] = base64.b64decode(result["content"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AnsibleFilterError("monitoring_prometheus: the plan file of %s is not text: run the vllm role on it again" % result.get("item")) from None
    plans = {}
    for host in server_hosts:
        own = hostvars[host]
        plans[host] = own["_monitoring_plan"] if "_monitoring_plan" in own else read.get(host)
    return plans


def monitoring_prometheus(hosts, hostvars, nginx_hosts, server_hosts, plans_read, monitor, settings):
    if not all(isinstance(v, list) for v in (hosts, nginx_hosts, server_hosts, plans_read)):
        raise AnsibleFilterError("monitoring_prometheus: the hosts, nginx hosts, servers and plans read must be lists")
    if not isinstance(hostvars, Mapping) or not isinstance(settings, Mapping):
        raise AnsibleFilterError("monitoring_prometheus: hostvars and settings must be mappings")
    host_vars = {}
    for host in hosts:
        try:
            own = hostvars[host]
        except (KeyError, TypeError) as exc:
            raise AnsibleFilterError("monitoring_prometheus: %s is not in the inventory" % host) from exc
        host_vars[host] = {key: own[key] for key in _HOST_KEYS if own.get(key)}
    plans = _plans(hostvars, [h for h in server_hosts if h in host_vars], plans_read)
    try:
        found, unknown = fleet(list(hosts), host_vars, set(nginx_hosts), plans)
        return {"config": prometheus_config(monitor, found, dict(settings)), "unknown_plans": unknown}
    except MonitoringError as exc:
        raise AnsibleFilterError("monitoring_prometheus: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"monitoring_prometheus": monitoring_prometheus}
