# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import GatewayLayoutError, site_model

DOCUMENTATION = r"""
name: gateway_site_model
short_description: What the gateway role's nginx site file prints, as data
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Builds the site model the gateway role's C(gpufleet.conf.j2) prints - upstreams and their server lines,
    listen lines, allow lists, locations - from the role's variables, after its input check.
  - Every upstream server is serving; M(gpufleet.serving.gateway_drained) marks the drained ones down.
positional: _input, context
options:
  _input:
    description: The role's C(gateway_*) variables, name to value.
    type: dict
    required: true
  context:
    description:
      - C(host), C(is_server), C(is_fleet), C(tls), C(check_keys), C(instances), C(backends), C(peers),
        C(resolved), C(paths), C(error_pages) and C(files) (C(keys), C(tls_certificate), C(tls_key),
        C(instance_auth)), as the role's C(vars/main.yml) passes them.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show the site model
  ansible.builtin.debug:
    var: _gateway_model
"""

RETURN = r"""
_value:
  description: The site model (C(version), C(host), C(balance), C(proxy), C(server), C(fleet), ...).
  type: dict
"""


def gateway_site_model(settings, context):
    if not isinstance(settings, Mapping) or not isinstance(context, Mapping):
        raise AnsibleFilterError("gateway_site_model: expects the role's variables and a context, both dicts")
    try:
        return site_model(settings, context)
    except GatewayLayoutError as exc:
        raise AnsibleFilterError("gateway_site_model: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"gateway_site_model": gateway_site_model}
