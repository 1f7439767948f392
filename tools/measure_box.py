# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Measure this box's candidate topologies without provisioning it (docs/bakeoff.md).

Run it with the Python that runs vLLM, from a checkout of the collection:

    python3 tools/measure_box.py --model /models/Llama-3.1-8B --out /tmp/measured --concurrency 1,8,64

The work is done by plugins/module_utils/box_measure.py; this file only puts the
checkout's collections/ folder on the import path (no Ansible needed).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "collections"))

from ansible_collections.gpufleet.serving.plugins.module_utils import box_measure  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(box_measure.main())
