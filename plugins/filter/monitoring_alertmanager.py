# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.monitoring_layout import MonitoringError, alertmanager_config

DOCUMENTATION = r"""
name: monitoring_alertmanager
short_description: Alertmanager's configuration for the fleet
version_added: 0.4.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - For the monitoring role. Alerts grouped by name and server, sent to each webhook of O(_input) (resolved ones
    too); with no webhook they stay in Alertmanager (its API and C(amtool alert)). A critical alert of an instance
    silences that instance's warnings.
  - Fails naming C(monitoring_alert_webhooks) when a URL is not an http or https URL.
positional: _input
options:
  _input:
    description: C(monitoring_alert_webhooks), a list of URLs.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Write Alertmanager's configuration
  ansible.builtin.copy:
    content: "{{ ['https://hooks.example.net/alerts'] | gpufleet.serving.monitoring_alertmanager | to_nice_yaml }}"
    dest: /etc/prometheus/alertmanager.yml
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The content of alertmanager.yml as data.
  type: dict
"""


def monitoring_alertmanager(webhooks):
    try:
        return alertmanager_config(webhooks)
    except MonitoringError as exc:
        raise AnsibleFilterError("monitoring_alertmanager: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"monitoring_alertmanager": monitoring_alertmanager}
