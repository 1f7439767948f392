#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: load_generate
short_description: Send a bounded load of completions to an OpenAI-compatible endpoint and summarise it
version_added: 0.1.0
description:
  - Sends O(count) completion requests (streamed by default) from O(concurrency) clients to O(url), cycling
    through the request kinds of O(mix), and returns requests/s, output tokens/s, time to first token, time per
    output token and latency (median and p99) over the requests that succeeded, with a count per outcome.
  - Runs on the host it is given to (a GPU server, a gateway, or the control node), so that the client sits where
    the operator wants it. Uses the collection's load generator, standard library only.
  - Requests are real; the module is meant for test and bake-off traffic, not for a server under production load.
author: gpufleet.serving contributors (@gpufleet)
requirements:
  - Python 3.8 or later. No third-party library.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
attributes:
  check_mode:
    support: partial
    details: In check mode the settings are checked and no request is sent.
options:
  url:
    description:
      - Base URL of the endpoint, C(http://HOST[:PORT]) or C(https://HOST[:PORT]).
    type: str
    required: true
  path:
    description:
      - API path to call.
    type: str
    choices: [/v1/completions, /v1/chat/completions]
    default: /v1/completions
  model:
    description:
      - Served model name sent in each request.
    type: str
    required: true
  api_key:
    description:
      - 'Sent as C(Authorization: Bearer <key>) when set.'
    type: str
    default: ""
  mix:
    description:
      - Request kinds as C(PROMPT_WORDS:OUTPUT_TOKENS[,...]), used in turn (C(16:4,16:256) mixes short and long answers).
        Every request asks for exactly its output tokens (C(ignore_eos)).
      - At most 64 kinds, 100000 prompt words and 1000000 output tokens each.
    type: str
    default: "16:8"
  stream:
    description:
      - Stream the answers (needed for time to first token and time per output token).
    type: bool
    default: true
  concurrency:
    description:
      - Clients sending at once (1 to 4096); each sends its next request when the last one ended.
    type: int
    default: 4
  count:
    description:
      - Requests to send in all, 1 to 1000000.
    type: int
    required: true
  timeout:
    description:
      - Seconds one request may take in all (and the socket timeout), above 0 and at most 86400. A request still running
        then is cut off and counted as a V(timeout), even when the server keeps sending bytes.
    type: float
    default: 120
  deadline:
    description:
      - Seconds the whole load may take, above 0 and at most 86400. No request starts after it and the requests still
        running are cut off; the task then fails naming O(deadline), so that a server that trickles bytes cannot hold it.
    type: float
    default: 3600
  seed:
    description:
      - Seed of the prompt words (each request also starts with its own number, so prompts differ).
    type: int
    default: 0
  return_records:
    description:
      - Also return one record per request.
    type: bool
    default: false
seealso:
  - module: gpufleet.serving.bakeoff_report
"""

EXAMPLES = r"""
- name: Drive a GPU server's nginx with 4 clients
  gpufleet.serving.load_generate:
    url: http://127.0.0.1:8000
    model: tiny
    mix: "16:8,64:32"
    concurrency: 4
    count: 40
  register: load

- name: Show the figures
  ansible.builtin.debug:
    msg: "{{ load.summary.output_tokens_per_s }} tok/s, TTFT p99 {{ load.summary.ttft_p99 }} s"
"""

RETURN = r"""
summary:
  description: The figures over the requests that succeeded (times in seconds; V(null) when nothing succeeded).
  returned: success, not in check mode
  type: dict
  sample:
    requests: 40
    ok: 40
    failed: 0
    outcomes: {ok: 40}
    seconds: 3.1
    requests_per_s: 12.9
    output_tokens_per_s: 258.1
    ttft_p50: 0.031
    ttft_p99: 0.094
    tpot_p50: 0.011
    tpot_p99: 0.019
    latency_p50: 0.24
    latency_p99: 0.41
records:
  description: One record per request (start and end as wall clock, outcome, ttft, tpot, latency, tokens, error).
  returned: when O(return_records=true)
  type: list
  elements: dict
"""

import math

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import loadgen

DEFAULT_DEADLINE = 3600.0
MAX_DEADLINE = 86400.0


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            path=dict(type="str", choices=list(loadgen.PATHS), default="/v1/completions"),
            model=dict(type="str", required=True),
            api_key=dict(type="str", default="", no_log=True),
            mix=dict(type="str", default="16:8"),
            stream=dict(type="bool", default=True),
            concurrency=dict(type="int", default=4),
            count=dict(type="int", required=True),
            timeout=dict(type="float", default=120.0),
            deadline=dict(type="float", default=DEFAULT_DEADLINE),
            seed=dict(type="int", default=0),
            return_records=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    settings = {
        "url": p["url"],
        "path": p["path"],
        "model": p["model"],
        "key": p["api_key"],
        "mix": p["mix"],
        "stream": p["stream"],
        "concurrency": p["concurrency"],
        "count": p["count"],
        "timeout": p["timeout"],
        "seed": p["seed"],
    }
    try:
        if p["count"] < 1:
            raise loadgen.LoadError("count: must be 1 or more")
        if not loadgen.KEY_RE.match(p["api_key"]):
            raise loadgen.LoadError("api_key: must be up to 4096 printable ASCII characters without spaces or line breaks")
        if not math.isfinite(p["timeout"]) or not 0 < p["timeout"] <= MAX_DEADLINE:
            raise loadgen.LoadError("timeout: must be a number of seconds above 0 and at most %d, not %r" % (MAX_DEADLINE, p["timeout"]))
        if not math.isfinite(p["deadline"]) or not 0 < p["deadline"] <= MAX_DEADLINE:
            raise loadgen.LoadError("deadline: must be a number of seconds above 0 and at most %d, not %r" % (MAX_DEADLINE, p["deadline"]))
        loadgen.check_settings(settings)
    except loadgen.LoadError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: no requests sent")
    try:
        records = loadgen.run(settings, deadline=p["deadline"])
    except loadgen.DeadlineError as exc:
        module.fail_json(msg=str(exc), summary=loadgen.summarize(exc.records))
    except loadgen.LoadError as exc:
        module.fail_json(msg=str(exc))
    except (ArithmeticError, ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError) as exc:
        # A last resort: the settings are checked above; name them rather than end in a traceback.
        module.fail_json(msg="url, mix, count: the load against %s stopped on an unexpected %s (%s)" % (p["url"], type(exc).__name__, exc))
    result = {"changed": False, "summary": loadgen.summarize(records)}
    if p["return_records"]:
        result["records"] = records
    module.exit_json(**result)


if __name__ == "__main__":
    main()
