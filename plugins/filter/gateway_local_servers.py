# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import GatewayLayoutError, local_servers_conf

DOCUMENTATION = r"""
name: gateway_local_servers
short_description: The server tier's upstreams of a GPU server
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - The text of C(/etc/nginx/gpufleet/local-servers.conf), included at nginx's http level - the server tier's
    C(upstream gpufleet_local) and one C(gpufleet_instance_<name>) upstream per instance (the route to it alone).
    The watchdog writes the same file with the same function (C(gateway_layout.local_servers_conf)).
  - An instance is C(down) when the drained set's server tier or the fenced set names it.
  - Fails, naming the value, when the model has no server tier or holds a value an nginx line cannot take.
positional: _input, drained, fenced
options:
  _input:
    description: The site model (with a server tier).
    type: dict
    required: true
  drained:
    description: The drained set in force, C({version, server, fleet}).
    type: dict
    required: true
  fenced:
    description: The fenced instances' names (C(fenced) of M(gpufleet.serving.gateway_fenced)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The server tier's upstream servers
  ansible.builtin.copy:
    content: "{{ _state.model | gpufleet.serving.gateway_local_servers(_state.drained, _fenced.fenced) }}"
    dest: /etc/nginx/gpufleet/local-servers.conf
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The file's text, the upstreams with one C(server) line per instance each.
  type: str
"""


def gateway_local_servers(model, drained, fenced):
    try:
        return local_servers_conf(model, drained, fenced)
    except GatewayLayoutError as exc:
        raise AnsibleFilterError("gateway_local_servers: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"gateway_local_servers": gateway_local_servers}
