# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Decide how vLLM uses a server's GPUs, and say why, with the numbers.

Pure functions over plain data: the ``nvidia_gpus`` facts (or a catalogue profile),
a model's ``config.json`` (plus safetensors sizes when they are there) and the
operator's goals. ``plan()`` returns the ``vllm_plan`` dict the module publishes;
every refusal is a ``PlanError`` whose ``param`` names the input to change.

This module is the planner's public face; the work is done, by concern, in:

- ``planner_common``: constants, the figures behind the estimates, ``PlanError``;
- ``planner_model``: the model's description from config.json and its weights from the safetensors;
- ``planner_cards``: the facts' cards checked, their links, warnings about them;
- ``planner_fit``: the assessment of each tensor-parallel split's fit and cost;
- ``planner_choose``: one chooser per topology and objective, the measured winner as one more;
- ``planner_measured``: the bake-off's measurement file, read and matched;
- ``planner_narrate``: the figures turned into the plan's sentences;
- ``planner_group``: server groups: tensor parallel inside each server, pipeline parallel across them;
- ``planner_plan``: ``plan()``, which checks the inputs, assesses once and chooses;
- ``planner_table``: the text table of plans.

The rules, and the figures behind them, are explained in docs/planner.md.
"""

from __future__ import annotations

# Tests and callers read vllm_planner.datetime (the measurement times are datetimes).
import datetime  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.gpufleet.serving.plugins.module_utils.planner_cards import group_interconnect
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    ALLREDUCE_US,
    ALLREDUCE_WORDS,
    ALLREDUCES_PER_LAYER,
    CONFIG_BOUNDS,
    DECODE_BANDWIDTH_EFFICIENCY,
    DEFAULT_BASE_PORT,
    DEFAULT_CPU_KVCACHE_SPACE_GIB,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MEASURED_MAX_AGE_DAYS,
    DEFAULT_MODEL_ROOT,
    DEFAULT_OVERHEAD_GIB,
    DEVICES,
    DTYPES,
    GIB,
    INTERCONNECT_RANK,
    INTERCONNECT_WORDS,
    KV_BYTES,
    LATENCY_TP_MIN_GAIN,
    LAYER_OVERHEAD_MS,
    LINEAR_BYTES,
    MAX_CARD_BYTES,
    MAX_CARDS_ONE_HOST,
    MAX_CONCURRENCY,
    MAX_CONFIG_BYTES,
    MAX_CPU_KVCACHE_GIB,
    MAX_EXPERTS,
    MAX_GPU_INDEX,
    MAX_GPUS,
    MAX_INDEX_BYTES,
    MAX_MEASURED_AGE_DAYS,
    MAX_MEASURED_BYTES,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    MAX_OVERHEAD_GIB,
    MAX_SAFETENSORS_FILES,
    MEASURED_FORMAT,
    MEASURED_LINEAR_GB,
    MEASURED_MATCH_KEYS,
    MEASURED_OBJECTIVES,
    MEASURED_ONE_CARD_MS,
    MEASURED_TOPOLOGIES,
    MEASURED_TP2_MS,
    MEASURED_VERSION,
    OBJECTIVES,
    OTHER_BYTES,
    SAFETENSORS_DTYPES,
    SAFETENSORS_MAX_HEADER,
    SINGLE_ENDPOINT_TOPOLOGIES,
    STEP_OVERHEAD_MS,
    TOPOLOGIES,
    TP_SCALING_EFFICIENCY,
    PlanError,
    fmt_ms,
    gib,
    kv_bytes_for,
    other_bytes,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_fit import decode_ms, fit, tp_sizes
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_group import (
    DEFAULT_MASTER_PORT,
    MAX_GROUP_MEMBERS,
    address_ok,
    check_group,
    stage_fits,
    stage_layers,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_measured import check_measured, load_measured, measured_choice, parse_measured_time
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_model import (
    checkpoint_format,
    checkpoint_weights,
    decode_bytes,
    describe_model,
    kv_bytes_per_token,
    load_model_config,
    read_safetensors_header,
    resolve_dtype,
    weight_bytes,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_plan import plan
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_table import TABLE_COLUMNS, format_plan_table, rows_from_results, topology_words

# The name the tests and older callers use for decode_bytes.
_decode_bytes = decode_bytes

__all__ = [
    "ALLREDUCES_PER_LAYER",
    "ALLREDUCE_US",
    "ALLREDUCE_WORDS",
    "CONFIG_BOUNDS",
    "DECODE_BANDWIDTH_EFFICIENCY",
    "DEFAULT_BASE_PORT",
    "DEFAULT_CPU_KVCACHE_SPACE_GIB",
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "DEFAULT_MASTER_PORT",
    "DEFAULT_MEASURED_MAX_AGE_DAYS",
    "DEFAULT_MODEL_ROOT",
    "DEFAULT_OVERHEAD_GIB",
    "DEVICES",
    "DTYPES",
    "GIB",
    "INTERCONNECT_RANK",
    "INTERCONNECT_WORDS",
    "KV_BYTES",
    "LATENCY_TP_MIN_GAIN",
    "LAYER_OVERHEAD_MS",
    "LINEAR_BYTES",
    "MAX_CARDS_ONE_HOST",
    "MAX_CARD_BYTES",
    "MAX_CONCURRENCY",
    "MAX_CONFIG_BYTES",
    "MAX_CPU_KVCACHE_GIB",
    "MAX_EXPERTS",
    "MAX_GPUS",
    "MAX_GPU_INDEX",
    "MAX_GROUP_MEMBERS",
    "MAX_INDEX_BYTES",
    "MAX_MEASURED_AGE_DAYS",
    "MAX_MEASURED_BYTES",
    "MAX_MODEL_LEN",
    "MAX_NUM_SEQS",
    "MAX_OVERHEAD_GIB",
    "MAX_SAFETENSORS_FILES",
    "MEASURED_FORMAT",
    "MEASURED_LINEAR_GB",
    "MEASURED_MATCH_KEYS",
    "MEASURED_OBJECTIVES",
    "MEASURED_ONE_CARD_MS",
    "MEASURED_TOPOLOGIES",
    "MEASURED_TP2_MS",
    "MEASURED_VERSION",
    "OBJECTIVES",
    "OTHER_BYTES",
    "SAFETENSORS_DTYPES",
    "SAFETENSORS_MAX_HEADER",
    "SINGLE_ENDPOINT_TOPOLOGIES",
    "STEP_OVERHEAD_MS",
    "TABLE_COLUMNS",
    "TOPOLOGIES",
    "TP_SCALING_EFFICIENCY",
    "PlanError",
    "address_ok",
    "check_group",
    "check_measured",
    "checkpoint_format",
    "checkpoint_weights",
    "decode_bytes",
    "decode_ms",
    "describe_model",
    "fit",
    "fmt_ms",
    "format_plan_table",
    "gib",
    "group_interconnect",
    "kv_bytes_for",
    "kv_bytes_per_token",
    "load_measured",
    "load_model_config",
    "measured_choice",
    "other_bytes",
    "parse_measured_time",
    "plan",
    "read_safetensors_header",
    "resolve_dtype",
    "rows_from_results",
    "stage_fits",
    "stage_layers",
    "topology_words",
    "tp_sizes",
    "weight_bytes",
]
