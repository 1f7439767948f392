# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The plan for one server: the inputs checked, the assessment made once, a chooser, the launch.

``assess`` reads the cards and the model and sizes every tensor-parallel split;
the topology an operator set, the estimate for the objective, and a matching
bake-off measurement are choosers over that one assessment (``planner_choose``).
"""

from __future__ import annotations

import datetime

from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog, vllm_launch
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import is_int, is_number
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_cards import card_warnings, check_cards, group_interconnect, links_of
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_choose import check_tensor_parallel, choose, choose_measured, plan_of
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    DEFAULT_BASE_PORT,
    DEFAULT_CPU_KVCACHE_SPACE_GIB,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MEASURED_MAX_AGE_DAYS,
    DEFAULT_MODEL_ROOT,
    DEFAULT_OVERHEAD_GIB,
    DEVICES,
    DTYPES,
    GIB,
    MAX_CONCURRENCY,
    MAX_CPU_KVCACHE_GIB,
    MAX_GPUS,
    MAX_MEASURED_AGE_DAYS,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    MAX_OVERHEAD_GIB,
    MIN_CPU_KVCACHE_GIB,
    OBJECTIVES,
    TOPOLOGIES,
    PlanError,
    kv_bytes_for,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_fit import assess
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_group import plan_with_group
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_measured import check_measured, load_measured, measured_choice
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_model import (
    checkpoint_format,
    checkpoint_weights,
    describe_model,
    kv_bytes_per_token,
    load_model_config,
    model_weights,
    resolve_dtype,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_narrate import base_reasons, cards_words

# The planning inputs and their defaults (the vllm_plan module's options of the same names).
PLAN_DEFAULTS = {
    "gpus": None,
    "gpu_profile": None,
    "gpu_count": None,
    "model": None,
    "dtype": "auto",
    "max_model_len": None,
    "concurrency": 1,
    "gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION,
    "objective": "throughput",
    "single_endpoint": False,
    "topology": "auto",
    "tensor_parallel_size": None,
    "base_port": DEFAULT_BASE_PORT,
    "overhead_gib": DEFAULT_OVERHEAD_GIB,
    "device": "cuda",
    "cpu_kvcache_space_gib": DEFAULT_CPU_KVCACHE_SPACE_GIB,
    "max_num_seqs": 0,
}
# plan()'s and _plan_topology()'s other keywords: measured, measured_max_age_days, now, group (a server group,
# planner_group), and for plan() launch and launch_prefix.


def _facts(gpus, gpu_profile, gpu_count):
    """The facts to plan on: ``gpus`` as given, or the facts of ``gpu_count`` catalogue cards."""
    if gpus is not None and gpu_profile is not None:
        raise PlanError("gpus", "give either gpus (facts) or gpu_profile with gpu_count, not both")
    if gpus is not None:
        return gpus
    if gpu_profile is None:
        raise PlanError("gpus", "give the nvidia_gpus facts in gpus, or gpu_profile and gpu_count to plan for catalogue cards")
    if gpu_count is None:
        raise PlanError("gpu_count", "gpu_profile needs gpu_count (how many such cards the server has)")
    if not is_int(gpu_count, 1, MAX_GPUS):
        raise PlanError("gpu_count", "must be a whole number of cards from 1 to %d (one server), not %r" % (MAX_GPUS, gpu_count))
    try:
        return gpu_catalog.profile_facts(gpu_profile, gpu_count)
    except gpu_catalog.CatalogError as exc:
        raise PlanError(exc.param, str(exc)) from exc


def _model(config, model_dir, config_path, dtype):
    """The model as planned: its description, the dtype its weights take, their bytes and where that figure comes from."""
    spec = describe_model(config, config_path)
    stored = checkpoint_format(config)
    checkpoint = checkpoint_weights(model_dir)
    if checkpoint and checkpoint["dtype"]:
        stored = checkpoint["dtype"]
    resolved, dtype_note = resolve_dtype(dtype, stored)
    spec = dict(spec, kv_bytes=kv_bytes_for(resolved))
    params = checkpoint["params"] if checkpoint and checkpoint["params"] and stored != "float32" else spec["params"]
    weights, weights_source = model_weights(spec, checkpoint, stored, resolved)
    warnings = []
    if resolved == "int4" and stored != "int4":
        warnings.append("dtype int4 needs an AWQ or GPTQ int4 checkpoint: vLLM does not quantize to 4 bits on load; point model at such a checkpoint")
    return {
        "spec": spec,
        "stored": stored,
        "dtype": resolved,
        "dtype_note": dtype_note,
        "params": params,
        "weights": weights,
        "weights_source": weights_source,
        "warnings": warnings,
    }


def _context_length(spec, max_model_len):
    """max_model_len as asked, or the model's own; refused when vLLM would refuse it."""
    model_max = spec["max_position_embeddings"]
    if max_model_len is None:
        if model_max is None:
            raise PlanError("max_model_len", "config.json gives no max_position_embeddings: set max_model_len")
        if model_max > MAX_MODEL_LEN:
            raise PlanError(
                "max_model_len",
                "config.json's max_position_embeddings is above the %d tokens the planner plans for: set max_model_len to the context you serve"
                % MAX_MODEL_LEN,
            )
        return model_max
    if model_max is not None and max_model_len > model_max:
        raise PlanError(
            "max_model_len",
            "%d is longer than the model's max_position_embeddings %d and vLLM refuses it; use %d or less" % (max_model_len, model_max, model_max),
        )
    return max_model_len


def _bandwidth(cards, gpu_profile, smallest):
    """The cards' memory bandwidth in GB/s from the catalogue, or None for a card it does not know."""
    if gpu_profile is not None:
        key = gpu_catalog.get_profile(gpu_profile)[0]
    else:
        key = gpu_catalog.match_name(cards[0].get("name"), smallest)
    return gpu_catalog.PROFILES[key]["bandwidth_gbs"] if key else None


def _checked_inputs(inputs):
    _check_serving_inputs(
        device=inputs["device"], cpu_kvcache_space_gib=inputs["cpu_kvcache_space_gib"], max_num_seqs=inputs["max_num_seqs"], concurrency=inputs["concurrency"]
    )
    _check_inputs(inputs)


def _assess(known, kwargs, check_fit=True):
    """The assessment; ``known`` is assessment()'s own record of the model's name and the cards' words as they are read."""
    unknown = sorted(set(kwargs) - set(PLAN_DEFAULTS))
    if unknown:
        raise TypeError("plan() got unexpected keyword arguments: %s" % ", ".join(unknown))
    a = dict(PLAN_DEFAULTS, **kwargs)
    _checked_inputs(a)
    gpus = _facts(a["gpus"], a["gpu_profile"], a["gpu_count"])
    cards = check_cards(gpus)
    a.update(cards=cards, links=links_of(gpus), indices=[card["index"] for card in cards], n=len(cards))
    name, model_dir, config, config_path = load_model_config(a["model"])
    known["model"] = a["name"] = name
    a.update(_model(config, model_dir, config_path, a["dtype"]))
    a["max_model_len"] = _context_length(a["spec"], a["max_model_len"])
    a["tokens"] = a["max_model_len"] * a["concurrency"]
    smallest = min(card["memory_total_bytes"] for card in cards)
    a.update(budget=int(a["gpu_memory_utilization"] * smallest), overhead=int(a["overhead_gib"] * GIB), utilization=a["gpu_memory_utilization"])
    a["warnings"] = tuple(a["warnings"] + card_warnings(cards, a["gpu_memory_utilization"], a["dtype"]))
    a["cards_words"] = known["cards"] = cards_words(cards, group_interconnect(a["links"], a["indices"]) if a["n"] > 1 else "single card")
    a.update(bandwidth=_bandwidth(cards, a["gpu_profile"], smallest), card_name=cards[0].get("name"), kv_bytes_per_token=kv_bytes_per_token(a["spec"]))
    a["sizes"], a["fits"], a["tp_min"] = assess(a["spec"], a["weights"], a["n"], budget=a["budget"], overhead=a["overhead"], tokens=a["tokens"])
    a["reasons"] = tuple(base_reasons(a, a["dtype_note"], a["weights_source"], smallest))
    if check_fit:
        check_tensor_parallel(a)
    return a


def assessment(check_fit=True, **kwargs):
    """Everything the choosers read, made once: cards, model, budget, the fit of every split, the reasons and warnings so far.

    A refusal's ``details`` carry the model's name and the cards' words when they were read. ``check_fit``
    False leaves a model that fits no split of this server's cards (or a tensor_parallel_size that does not
    fit) to the caller: a server group may still hold it.
    """
    known = {}
    try:
        return _assess(known, kwargs, check_fit)
    except PlanError as exc:
        exc.details = dict(known)
        raise


def _with_reason(result, reason, source=None):
    """A new plan: ``result`` with ``reason`` first (and ``source`` when given)."""
    return dict(result, reasons=[reason] + result["reasons"], **({"source": source} if source else {}))


def _measured_data(measured, measured_max_age_days):
    """(where, parsed measurement file or None) for ``measured`` (a path or the parsed content)."""
    if not is_int(measured_max_age_days, 1, MAX_MEASURED_AGE_DAYS):
        raise PlanError("measured_max_age_days", "must be a whole number of days from 1 to %d, not %r" % (MAX_MEASURED_AGE_DAYS, measured_max_age_days))
    if isinstance(measured, dict):
        return "the measurements given", check_measured(measured, "the measurements given")
    return str(measured), load_measured(measured)


def _measured(a, estimate, measured, measured_max_age_days, now):
    """The plan once the bake-off's measurements had their say: the measured chooser over the estimate's assessment."""
    where, data = _measured_data(measured, measured_max_age_days)
    if data is None:
        return _with_reason(estimate, "measured: no bake-off results at %s yet (playbooks/bakeoff.yml writes them); planned from estimates." % where)
    if a["topology"] != "auto":
        return _with_reason(estimate, "measured: topology %s is set, so the bake-off results in %s are not used." % (a["topology"], where))
    if a["tensor_parallel_size"] is not None:
        return _with_reason(estimate, "measured: tensor_parallel_size is set, so the bake-off results in %s are not used." % where)
    topology, reason = measured_choice(
        data,
        estimate,
        objective=a["objective"],
        single_endpoint=a["single_endpoint"],
        gpu_memory_utilization=a["gpu_memory_utilization"],
        now=now or datetime.datetime.now(datetime.timezone.utc),
        max_age_days=measured_max_age_days,
        where=where,
    )
    if topology is None:
        return _with_reason(estimate, reason)
    return choose_measured(a, estimate, topology, reason)


def _single(a, measured, measured_max_age_days, now):
    """The plan of this server alone: the estimate's chooser, then the bake-off's measurement when one is given."""
    estimate = dict(plan_of(a, choose(a, a["topology"])), source="estimated")
    if measured is None or measured == "":
        return estimate
    return _measured(a, estimate, measured, measured_max_age_days, now)


def _plan_topology(measured=None, measured_max_age_days=DEFAULT_MEASURED_MAX_AGE_DAYS, now=None, group=None, **kwargs):
    """The vllm_plan for one server, without its launch (see ``PLAN_DEFAULTS`` for the arguments).

    ``measured``: a bake-off measurement file (path, or its parsed content). With
    ``topology`` auto, a measurement of the same model on the same cards and
    settings, at most ``measured_max_age_days`` old, decides the topology for the
    objective instead of the estimates (and the reasons say so); otherwise the
    reasons say why it was ignored. The plan's ``source`` is ``measured`` or
    ``estimated``. The measured topology is one more chooser over the same
    assessment: nothing is planned twice.

    ``group``: the server group this host belongs to (``planner_group``). When
    the model fits this server (and topology is not ``pp``) the plan is this
    server's own, with ``group`` None and a sentence saying so; otherwise the
    plan of this host's place in a pipeline of servers (topology ``pp``).
    Without ``group`` nothing changes, and topology ``pp`` is refused.

    Raises PlanError naming the input to change; its ``details`` carry the model
    name and the cards when they were known.
    """
    grouped = group is not None or kwargs.get("topology") == "pp"
    a = assessment(check_fit=not grouped, **kwargs)
    try:
        if not grouped:
            return _single(a, measured, measured_max_age_days, now)
        result = plan_with_group(a, group, lambda: _single(a, measured, measured_max_age_days, now))
        if result["topology"] == "pp" and measured is not None and measured != "":
            result["reasons"].insert(0, "measured: the bake-off measures one server, so its results do not decide a server group's plan.")
        return result
    except PlanError as exc:
        exc.details = {"model": a["name"], "cards": a["cards_words"]}
        raise


def plan(measured=None, measured_max_age_days=DEFAULT_MEASURED_MAX_AGE_DAYS, now=None, launch=None, launch_prefix="", **kwargs):
    """The vllm_plan for one server, with each instance's launch (``vllm_launch.build_launch``).

    ``launch``: the launch settings (``vllm_launch.DEFAULT_SETTINGS``); an empty
    ``served_model_name`` takes the model's name and an empty ``model_path``
    ``/var/lib/vllm/models/<served_model_name>``. ``launch_prefix`` prefixes the
    setting names in the messages of refused launch settings (the plan role's
    ``plan_``). See ``_plan_topology`` for the rest.
    """
    result = _plan_topology(measured=measured, measured_max_age_days=measured_max_age_days, now=now, **kwargs)
    settings = dict(launch or {})
    if not settings.get("served_model_name"):
        if not vllm_launch.served_name_ok(result["model"]):
            error = PlanError(
                "model",
                "the model directory's name %r is not a safe served model name (letters, digits and . _ : / @ + -, no whitespace, "
                "control characters or '..'): rename the directory or set %sserved_model_name" % (result["model"], launch_prefix),
            )
            error.details = {"model": result["model"], "cards": result["cards"]}
            raise error
        settings["served_model_name"] = result["model"]
    if not settings.get("model_path"):
        settings["model_path"] = DEFAULT_MODEL_ROOT + "/" + settings["served_model_name"]
    try:
        return vllm_launch.build_launch(result, settings, prefix=launch_prefix)
    except vllm_launch.LaunchError as exc:
        error = PlanError(exc.param, str(exc))
        error.args = (str(exc),)  # the launch's message already names the setting
        error.details = {"model": result["model"], "cards": result["cards"]}
        raise error from exc


def _check_inputs(inputs):
    """Refuse planning inputs out of their range, each by its name."""
    dtype, objective, topology, concurrency = inputs["dtype"], inputs["objective"], inputs["topology"], inputs["concurrency"]
    max_model_len, tensor_parallel_size, gpu_memory_utilization = inputs["max_model_len"], inputs["tensor_parallel_size"], inputs["gpu_memory_utilization"]
    base_port, overhead_gib = inputs["base_port"], inputs["overhead_gib"]
    if dtype not in DTYPES:
        raise PlanError("dtype", "%r is not a dtype the planner knows; use one of %s" % (dtype, ", ".join(DTYPES)))
    if objective not in OBJECTIVES:
        raise PlanError("objective", "%r is not an objective; use throughput or latency" % (objective,))
    if topology not in TOPOLOGIES:
        raise PlanError("topology", "%r is not a topology; use one of %s" % (topology, ", ".join(TOPOLOGIES)))
    for name, value, high in (("max_model_len", max_model_len, MAX_MODEL_LEN), ("tensor_parallel_size", tensor_parallel_size, MAX_GPUS)):
        if value is not None and not is_int(value, 1, high):
            raise PlanError(name, "must be a whole number from 1 to %d, not %r" % (high, value))
    if not is_int(concurrency, 1, MAX_CONCURRENCY):
        raise PlanError("concurrency", "must be a whole number of sequences from 1 to %d, not %r" % (MAX_CONCURRENCY, concurrency))
    if not is_number(gpu_memory_utilization) or not 0 < gpu_memory_utilization <= 1:
        raise PlanError("gpu_memory_utilization", "must be a fraction in (0, 1], like vLLM's default 0.9, not %r" % (gpu_memory_utilization,))
    # 1-65535 here; the launch (vllm_launch.check_plan) then holds every instance's port to 1024-65535.
    if not is_int(base_port, 1, 65535):
        raise PlanError("base_port", "must be a TCP port between 1 and 65535, not %r" % (base_port,))
    if not is_number(overhead_gib, 0, MAX_OVERHEAD_GIB):
        raise PlanError("overhead_gib", "must be a finite number of GiB from 0 to %g, not %r" % (MAX_OVERHEAD_GIB, overhead_gib))


def _check_serving_inputs(*, device, cpu_kvcache_space_gib, max_num_seqs, concurrency):
    if device not in DEVICES:
        raise PlanError("device", "%r is not a vLLM build; use cuda or cpu" % (device,))
    # The launch gives vLLM bytes (--kv-cache-memory-bytes): fractions of a GiB too, from 64 MiB.
    if not is_number(cpu_kvcache_space_gib, MIN_CPU_KVCACHE_GIB, MAX_CPU_KVCACHE_GIB):
        raise PlanError(
            "cpu_kvcache_space_gib",
            "must be a number of GiB from %g (64 MiB) to %d, such as 0.25 or 1, not %r" % (MIN_CPU_KVCACHE_GIB, MAX_CPU_KVCACHE_GIB, cpu_kvcache_space_gib),
        )
    if not is_int(max_num_seqs, 0, MAX_NUM_SEQS):
        raise PlanError(
            "max_num_seqs", "must be 0 (vLLM's usual 256, or concurrency when larger) or a whole number up to %d, not %r" % (MAX_NUM_SEQS, max_num_seqs)
        )
    if isinstance(concurrency, int) and 0 < max_num_seqs < concurrency:
        raise PlanError(
            "max_num_seqs",
            "%d is below concurrency %d: vLLM would never run the sequences the plan holds KV cache for; set max_num_seqs to %d or more (or 0)"
            % (max_num_seqs, concurrency, concurrency),
        )
