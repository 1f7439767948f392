# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.monitoring_layout import (
    MonitoringError,
    allowed_networks,
    instances_of,
    metrics_server,
    plan_value,
)

DOCUMENTATION = r"""
name: monitoring_metrics_server
short_description: The server tier's metrics server for Prometheus, and who may reach the exporters
version_added: 0.4.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - For the monitoring role. The model the role's nginx template prints - C(location = /metrics/<instance>) to
    each vLLM instance's own C(/metrics) on loopback - and the addresses allowed to it and to the exporters, the
    monitoring hosts' addresses as this host resolves them, O(allow) and loopback.
  - Fails naming the monitoring host that does not resolve, or the value of C(monitoring_allow) that is not an
    address or a range, or that is every address.
positional: _input, resolved, allow, port
options:
  _input:
    description: This host's plan (a dict, or the vllm role's plan file as JSON text); empty or null on a host
      without vLLM.
    type: raw
    required: true
  resolved:
    description: Monitoring host -> its addresses (the C(resolve_names) module's C(addresses)).
    type: dict
    required: true
  allow:
    description: C(monitoring_allow), further addresses or CIDR ranges.
    type: list
    elements: str
    required: true
  port:
    description: The metrics server's port.
    type: int
    default: 9180
"""

EXAMPLES = r"""
- name: Who may scrape this host
  ansible.builtin.debug:
    msg: "{{ ({} | gpufleet.serving.monitoring_metrics_server({'mon1': ['10.0.0.5']}, []))['allow'] }}"
"""

RETURN = r"""
_value:
  description: C(allow) (addresses and ranges), C(server), the metrics server's model (C(port), C(allow),
    C(instances)), null without instances, and C(cuda), whether the plan runs on CUDA (the DCGM exporter's hosts).
  type: dict
"""


def monitoring_metrics_server(plan, resolved, allow, port=9180):
    try:
        plan = plan_value(plan, "this host") if plan else None
        instances = instances_of(plan, "this host") if plan else []
        networks = allowed_networks(resolved, allow)
        server = metrics_server(instances, networks, port) if instances else None
    except MonitoringError as exc:
        raise AnsibleFilterError("monitoring_metrics_server: %s" % exc) from None
    return {"allow": networks, "server": server, "cuda": isinstance(plan, dict) and plan.get("device") == "cuda"}


class FilterModule:
    def filters(self):
        return {"monitoring_metrics_server": monitoring_metrics_server}
