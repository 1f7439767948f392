#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bakeoff_report
short_description: Write a bake-off's report, plots and measurement file, and name the winner per objective
version_added: 0.1.0
description:
  - Takes the load generator's summaries of each topology at each concurrency level (as measured by
    C(playbooks/bakeoff.yml)) and ranks the topologies per objective, V(throughput) (most output tokens/s at
    each topology's best level), V(latency) (lowest median time per output token at the lowest level) and
    V(ttft) (lowest p99 time to first token at the highest level). Runs with failed requests cannot win.
  - Writes C(report.md) (tables, winners, the least_conn / round_robin comparison), C(report.json) (the same
    data, with the series of each plot), C(throughput.png) and C(ttft_p99.png) into O(report_dir).
  - Adds the result to O(measured_file), the file M(gpufleet.serving.vllm_plan) reads through its C(measured)
    option, replacing an earlier result of the same host, model, cards and settings.
  - 'Meant to run on the control node (C(delegate_to: localhost)).'
author: gpufleet.serving contributors (@gpufleet)
requirements:
  - matplotlib on the host the module runs on (the plots).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
options:
  host:
    description:
      - The server measured.
    type: str
    required: true
  plan:
    description:
      - One of the plans measured (M(gpufleet.serving.vllm_plan)'s C(vllm_plan)); its model, cards, dtype,
        C(max_model_len) and C(gpu_memory_utilization) are what the measurement applies to.
    type: dict
    required: true
  topologies:
    description:
      - Per candidate topology, C(words) (what ran) or C(refused) (the planner's refusal).
    type: dict
    required: true
  results:
    description:
      - 'One entry per run, C({topology, concurrency, summary}), C(summary) as returned by M(gpufleet.serving.load_generate).'
    type: list
    elements: dict
    required: true
  balance:
    description:
      - 'The balancer comparison: C({topology, mix, concurrency, runs: {least_conn: summary, round_robin: summary}}).'
    type: dict
  settings:
    description:
      - The load settings, shown in the report and kept in the measurement (C(mix), C(concurrency),
        C(requests_per_level), C(warmup_requests), C(client), C(url)).
    type: dict
    default: {}
  measured_at:
    description:
      - When the measurement ended, ISO 8601 with a zone; defaults to now (UTC).
    type: str
  report_dir:
    description:
      - Folder for the report and plots; created when missing.
    type: path
    required: true
  measured_file:
    description:
      - The measurement file to add the result to; created when missing.
    type: path
    required: true
seealso:
  - module: gpufleet.serving.load_generate
  - module: gpufleet.serving.vllm_plan
"""

EXAMPLES = r"""
- name: Write the report on the control node
  gpufleet.serving.bakeoff_report:
    host: "{{ inventory_hostname }}"
    plan: "{{ plan_result }}"
    topologies: {dp: {words: "dp x2"}, tp: {words: "tp 2"}}
    results: "{{ bakeoff_runs }}"
    report_dir: "{{ playbook_dir }}/bakeoff/{{ inventory_hostname }}"
    measured_file: "{{ playbook_dir }}/bakeoff/measured.json"
  delegate_to: localhost
"""

RETURN = r"""
winners:
  description: Per objective (V(throughput), V(latency), V(ttft)), the ranking best first and the winner.
  returned: success
  type: dict
  sample:
    throughput:
      metric: output_tokens_per_s
      better: higher
      unit: tok/s
      winner: dp
      ranking: [{topology: dp, value: 412.0, concurrency: 16}, {topology: tp, value: 260.0, concurrency: 16}]
balance:
  description: The least_conn / round_robin comparison with C(latency_p99_ratio) and C(ttft_p99_ratio), or V(null).
  returned: success
  type: dict
paths:
  description: The files written (C(markdown), C(json), C(plots), C(measured)); empty in check mode.
  returned: success
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gpufleet.serving.plugins.module_utils import bakeoff, vllm_planner


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            plan=dict(type="dict", required=True),
            topologies=dict(type="dict", required=True),
            results=dict(type="list", elements="dict", required=True),
            balance=dict(type="dict"),
            settings=dict(type="dict", default={}),
            measured_at=dict(type="str"),
            report_dir=dict(type="path", required=True),
            measured_file=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    measured_at = p["measured_at"] or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        rows = bakeoff.check_results(p["results"])
        balance = None
        if p["balance"]:
            b = p["balance"]
            balance = bakeoff.balance_comparison(b.get("runs"), topology=b.get("topology"), mix=b.get("mix"), concurrency=b.get("concurrency"))
        missing = [key for key in vllm_planner.MEASURED_MATCH_KEYS if key not in p["plan"]]
        if missing:
            raise bakeoff.BakeoffError("plan: not a vllm_plan (no %s)" % ", ".join(missing))
        report = bakeoff.build_report(
            host=p["host"], measured_at=measured_at, plan=p["plan"], rows=rows, plans=p["topologies"], settings=p["settings"], balance=balance
        )
        # Render everything (and read the measurement file) before the first file is written.
        bakeoff.render_markdown(report)
        if not module.check_mode:
            bakeoff.prepare_report(report, p["report_dir"], p["measured_file"])
    except (bakeoff.BakeoffError, vllm_planner.PlanError) as exc:
        module.fail_json(msg=str(exc))
    except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # A last resort: the input is checked above; name it rather than end in a traceback.
        module.fail_json(msg="results, plan, settings: the report could not be built: unexpected %s (%s)" % (type(exc).__name__, exc))
    if module.check_mode:
        module.exit_json(changed=False, winners=report["winners"], balance=balance, paths={})
    if not bakeoff.HAS_MATPLOTLIB:
        module.fail_json(msg=missing_required_lib("matplotlib"), exception=str(bakeoff.MATPLOTLIB_IMPORT_ERROR))
    try:
        paths = bakeoff.write_report(report, p["report_dir"], p["measured_file"])
    except (bakeoff.BakeoffError, vllm_planner.PlanError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="report_dir, measured_file: writing the report failed: %s" % exc)
    module.exit_json(changed=True, winners=report["winners"], balance=balance, paths=paths)


if __name__ == "__main__":
    main()
