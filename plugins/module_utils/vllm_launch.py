# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Each planned vLLM instance's launch: its argument vector and its environment.

One function, ``build_launch``, turns a plan (``vllm_planner.plan``) and the
launch settings into what every instance runs. The planner's figures (fit, KV
tokens, concurrency) come from the same plan fields this module writes into the
arguments (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
``max_num_seqs``, tensor/data parallel sizes, the CPU build's KV-cache space),
so what the plan table promises is what vLLM is told. The vllm role only prints
the result (a systemd drop-in and an environment file per instance).

``check_settings`` refuses launch settings that would change what the plan
computed or that cannot travel safely into systemd (extra arguments such as
``--max-model-len``, names with whitespace, ...); ``check_plan`` refuses a plan
whose instances share a card or a port, or whose launch disagrees with its
planned figures (``launch_mismatches``). ``exec_start`` quotes an argument
vector for systemd's ``ExecStart=``. Every message names the setting to change.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import GIB, MAX_CPU_KVCACHE_GIB, MIN_CPU_KVCACHE_GIB

# The module vLLM's OpenAI-compatible server runs as (``python -m ...``).
ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")
DEVICES = ("cuda", "cpu")
# vLLM's own default for --max-num-seqs on its OpenAI server with most cards;
# the planned concurrency wins when it is larger.
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_SETTINGS = {
    "model_path": "",
    "served_model_name": "",
    "host": "127.0.0.1",
    "enforce_eager": False,
    "extra_args": [],
    "extra_env": {},
    "shutdown_timeout_sec": 60,
    "http_keepalive_sec": 75,
    "cpu_bind_cores": False,
    "allreduce_multicast": False,
    "allow_remote_host": False,
    "scale_out": False,
}
SETTING_NAMES = tuple(DEFAULT_SETTINGS)

# Extra arguments that would change what the plan computed, and the setting to
# use instead. Names are compared with underscores read as dashes, as vLLM does.
PLANNED_ARGS = {
    "--model": "{p}model_path",
    "--served-model-name": "{p}served_model_name",
    "--host": "{p}host",
    "--port": "{p}base_port",
    "--dtype": "{p}dtype",
    "--quantization": "{p}dtype",
    "-q": "{p}dtype",
    "--kv-cache-dtype": "{p}dtype",
    "--max-model-len": "{p}max_model_len",
    "--gpu-memory-utilization": "{p}gpu_memory_utilization",
    "--kv-cache-memory": "{p}gpu_memory_utilization (or {p}cpu_kvcache_space_gib on the CPU build)",
    "--kv-cache-memory-bytes": "{p}gpu_memory_utilization (or {p}cpu_kvcache_space_gib on the CPU build)",
    "--num-gpu-blocks-override": "{p}gpu_memory_utilization (or {p}cpu_kvcache_space_gib on the CPU build)",
    "--cpu-offload-gb": "{p}dtype or a larger {p}tensor_parallel_size (the plan keeps every weight on the cards)",
    "--tensor-parallel-size": "{p}tensor_parallel_size (or {p}topology)",
    "-tp": "{p}tensor_parallel_size (or {p}topology)",
    "--data-parallel-size": "{p}topology vllm_dp (or {p}single_endpoint)",
    "-dp": "{p}topology vllm_dp (or {p}single_endpoint)",
    "--pipeline-parallel-size": "{p}topology pp (a group of servers, gpufleet_server_group)",
    "-pp": "{p}topology pp (a group of servers, gpufleet_server_group)",
    "--nnodes": "gpufleet_server_group (the plan's group)",
    "-n": "gpufleet_server_group (the plan's group)",
    "--node-rank": "gpufleet_server_group (the plan's group)",
    "-r": "gpufleet_server_group (the plan's group)",
    "--master-addr": "gpufleet_group_address of the group's first server",
    "--master-port": "gpufleet_group_port",
    "--headless": "gpufleet_server_group (a group's followers run headless)",
    "--max-num-seqs": "{p}max_num_seqs",
    "--enforce-eager": "{p}enforce_eager",
    "--shutdown-timeout": "{p}shutdown_timeout_sec",
    "--enable-scale-out": "balance cache_aware of the model in gpufleet_models (vLLM's router needs its render endpoints)",
}
# Arguments of the launch settings rather than of the plan's figures (launch_mismatches leaves them out).
LAUNCH_SETTING_ARGS = ("--model", "--served-model-name", "--host", "--enforce-eager", "--shutdown-timeout", "--enable-scale-out")
# Environment variables the plan sets; extra_env must not change them.
PLANNED_ENV = {
    "CUDA_VISIBLE_DEVICES": "the plan's cards ({p}topology, {p}tensor_parallel_size)",
    "CUDA_DEVICE_ORDER": "nothing: NVML and CUDA must number cards alike",
    "NCCL_P2P_DISABLE": "nothing: the plan sets it where the cards have no working P2P",
    "VLLM_CPU_KVCACHE_SPACE": "{p}cpu_kvcache_space_gib",
    "VLLM_CPU_OMP_THREADS_BIND": "{p}cpu_bind_cores",
    "OMP_NUM_THREADS": "{p}cpu_bind_cores",
    "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "{p}http_keepalive_sec",
    "VLLM_HOST_IP": "gpufleet_group_address (a group member's own address; loopback otherwise)",
    "GLOO_SOCKET_IFNAME": "gpufleet_group_interface",
    "NCCL_SOCKET_IFNAME": "gpufleet_group_interface",
}
# Without allreduce_multicast, a tensor-parallel instance on the cards keeps
# every all-reduce path that opens NVLink multicast (cuMulticastCreate) off:
# vLLM's fused all-reduce + RMSNorm (FlashInfer), torch's symmetric memory,
# NCCL's NVLS and NVSHMEM's. The set that ran on the lent H200s (vLLM 0.26).
NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "VLLM_ALLREDUCE_USE_FLASHINFER": "0",
    "VLLM_FLASHINFER_ALLREDUCE_BACKEND": "trtllm",
}
NO_MULTICAST_ARGS = ("--compilation-config", '{"pass_config":{"fuse_allreduce_rms":false}}')
PLANNED_ENV.update(dict.fromkeys(NO_MULTICAST_ENV, "{p}allreduce_multicast"))
# Variables the launch and the vllm role write themselves (stale detection reads them).
RESERVED_ENV = ("GPUFLEET_PORT", "GPUFLEET_UNIT_SHA1", "GPUFLEET_VLLM_PACKAGE", "GPUFLEET_LAUNCH_SHA1", "GPUFLEET_GUARD_SHA1")
# Variables the planner itself puts in an instance's env (kept when a launch is built again).
PLANNER_ENV = ("NCCL_P2P_DISABLE",)
# A group of servers (topology pp): its name, a member's address, the network interface between them.
GROUP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,14}$")
MAX_GROUP_NODES = 64
# Host paths and names: no whitespace, quotes, control characters, '%' or '$'.
PATH_RE = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9.:-]+$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Environment values travel through an EnvironmentFile: a strict set.
ENV_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:/@%+=|*?&~-]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Bounds of the launch settings (no real launch comes near them).
MAX_NAME_LENGTH = 255
MAX_PATH_LENGTH = 4096
MAX_EXTRA_ARGS = 256
MAX_ARG_LENGTH = 4096
MAX_EXTRA_ENV = 256
MAX_TIMEOUT_SEC = 86400
# Words systemd takes as they are in ExecStart= (no quoting needed).
PLAIN_WORD_RE = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")


class LaunchError(ValueError):
    """A refused setting or plan; ``param`` names the setting to change."""

    def __init__(self, param, message):
        super().__init__(message)
        self.param = param


def _name(prefix, setting):
    """The settings named in ``setting`` (a PLANNED_ARGS/PLANNED_ENV text) with the caller's prefix."""
    return setting.format(p=prefix)


def argument_name(arg):
    """The option an argument sets (``--max_model_len=4096`` -> ``--max-model-len``), or None for a value."""
    if not isinstance(arg, str) or not arg.startswith("-") or arg in ("-", "--") or re.match(r"^-\d", arg):
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        return "--" + name[2:].replace("_", "-")
    return name


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def served_name_ok(name):
    """True for a served model name that is safe in an argument, a URL and a path: NAME_RE, bounded, no '..' part."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and bool(NAME_RE.match(name)) and ".." not in name.split("/")


def is_loopback(host):
    """True for localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings, prefix=""):
    """The launch settings with defaults filled in; LaunchError for a value that cannot be launched safely."""
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise LaunchError(unknown[0], "%s%s is not a launch setting (known: %s)" % (prefix, unknown[0], ", ".join(prefix + n for n in SETTING_NAMES)))
    out = dict(DEFAULT_SETTINGS)
    out.update({k: v for k, v in settings.items() if v is not None})
    name = out["served_model_name"]
    if not served_name_ok(name):
        raise LaunchError(
            "served_model_name",
            "%sserved_model_name must start with a letter or digit and hold only letters, digits and . _ : / @ + - (no whitespace, "
            "control characters or '..' part, at most %d characters), not %r" % (prefix, MAX_NAME_LENGTH, name),
        )
    path = out["model_path"]
    if (
        not isinstance(path, str)
        or len(path) > MAX_PATH_LENGTH
        or not PATH_RE.match(path)
        or "/../" in path + "/"
        or path.endswith("/..")
        or "/./" in path + "/"
    ):
        raise LaunchError(
            "model_path",
            "%smodel_path must be an absolute path on the server of letters, digits and . _ + @ / - (no whitespace, quotes, control "
            "characters or '..' part), not %r" % (prefix, path),
        )
    for key in ("enforce_eager", "cpu_bind_cores", "allreduce_multicast", "allow_remote_host", "scale_out"):
        if not isinstance(out[key], bool):
            raise LaunchError(key, "%s%s must be true or false, not %r" % (prefix, key, out[key]))
    host = out["host"]
    if not isinstance(host, str) or len(host) > 253 or not HOST_RE.match(host):
        raise LaunchError("host", "%shost must be an IP address or host name (letters, digits, . : -), not %r" % (prefix, host))
    if not out["allow_remote_host"] and not is_loopback(host):
        raise LaunchError(
            "host",
            "%shost %r is not a loopback address: vLLM has no access control of its own and stays on 127.0.0.1 behind the server tier's "
            "nginx; use 127.0.0.1 (or set %sallow_remote_host to bind another address on purpose)" % (prefix, host, prefix),
        )
    if not _is_int(out["shutdown_timeout_sec"]) or not 0 <= out["shutdown_timeout_sec"] <= MAX_TIMEOUT_SEC:
        raise LaunchError(
            "shutdown_timeout_sec",
            "%sshutdown_timeout_sec must be 0 to %d seconds, not %r" % (prefix, MAX_TIMEOUT_SEC, out["shutdown_timeout_sec"]),
        )
    if not _is_int(out["http_keepalive_sec"]) or not 10 <= out["http_keepalive_sec"] <= MAX_TIMEOUT_SEC:
        raise LaunchError(
            "http_keepalive_sec",
            "%shttp_keepalive_sec must be 10 to %d seconds (75 by default), well above the idle timeout of the proxy in front, not %r"
            % (prefix, MAX_TIMEOUT_SEC, out["http_keepalive_sec"]),
        )
    out["extra_args"] = check_extra_args(out["extra_args"], prefix)
    out["extra_env"] = check_extra_env(out["extra_env"], prefix)
    return out


def check_extra_args(args, prefix=""):
    """The extra vLLM arguments as a list of strings; LaunchError for one the plan owns or one that cannot be quoted."""
    if not isinstance(args, (list, tuple)):
        raise LaunchError("extra_args", "%sextra_args must be a list of arguments, one per item, not %r" % (prefix, args))
    if len(args) > MAX_EXTRA_ARGS:
        raise LaunchError("extra_args", "%sextra_args holds %d arguments, more than %d" % (prefix, len(args), MAX_EXTRA_ARGS))
    out = []
    for item in args:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise LaunchError("extra_args", "%sextra_args must hold strings, not %r" % (prefix, item))
        arg = str(item)
        if len(arg) > MAX_ARG_LENGTH:
            raise LaunchError("extra_args", "%sextra_args item %r... is longer than %d characters" % (prefix, arg[:40], MAX_ARG_LENGTH))
        if CONTROL_RE.search(arg):
            raise LaunchError("extra_args", "%sextra_args item %r holds a control character (a newline?): give each argument as one item" % (prefix, arg))
        option = argument_name(arg)
        if option in PLANNED_ARGS:
            raise LaunchError(
                "extra_args",
                "%sextra_args holds %s, which the plan sets from its own figures: remove it and set %s instead"
                % (prefix, arg, _name(prefix, PLANNED_ARGS[option])),
            )
        out.append(arg)
    return out


def check_extra_env(env, prefix=""):
    """The extra environment as a dict of strings; LaunchError for a variable the plan owns or an unsafe value."""
    if not isinstance(env, dict):
        raise LaunchError("extra_env", "%sextra_env must be a mapping of variable names to values, not %r" % (prefix, env))
    if len(env) > MAX_EXTRA_ENV:
        raise LaunchError("extra_env", "%sextra_env holds %d variables, more than %d" % (prefix, len(env), MAX_EXTRA_ENV))
    out = {}
    for key, given in env.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise LaunchError("extra_env", "%sextra_env: %r is not a variable name (letters, digits, _; not starting with a digit)" % (prefix, key))
        if key in PLANNED_ENV or key in RESERVED_ENV:
            raise LaunchError(
                "extra_env",
                "%sextra_env sets %s, which the launch sets itself: remove it (set %s)"
                % (prefix, key, _name(prefix, PLANNED_ENV.get(key, "nothing: the vllm role writes it"))),
            )
        if isinstance(given, bool):
            given = "1" if given else "0"  # noqa: PLW2901
        if not isinstance(given, (str, int, float)):
            raise LaunchError("extra_env", "%sextra_env %s must be a string or number, not %r" % (prefix, key, given))
        value = str(given)
        if len(key) > 128 or len(value) > MAX_ARG_LENGTH or not ENV_VALUE_RE.match(value):
            raise LaunchError(
                "extra_env",
                "%sextra_env %s=%r holds characters an environment file cannot carry safely: use letters, digits and _ . , : / @ %% + = | * ? & ~ -"
                % (prefix, key, value),
            )
        out[key] = value
    return out


def default_max_num_seqs(concurrency):
    """--max-num-seqs when none is set: vLLM's usual 256, or the planned concurrency when it is larger."""
    return max(DEFAULT_MAX_NUM_SEQS, int(concurrency))


def cpu_kv_cache_bytes(space_gib):
    """The bytes of KV cache of a worker of vLLM's CPU build (--kv-cache-memory-bytes) for the plan's cpu_kvcache_space_gib."""
    return round(space_gib * GIB)


def _fmt(value):
    """A number as vLLM's argument parser reads it back (0.9, not 0.90000001; 8, not 8.0)."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def planned_arguments(plan):
    """The arguments that carry the plan's figures, in order, for every instance (the port comes per instance)."""
    args = ["--max-model-len", str(plan["max_model_len"])]
    dtype = plan["dtype"]
    if dtype == "fp8" and plan.get("quantized_checkpoint") is not True:
        # vLLM quantizes the linear layers to FP8 on load; activations stay 16-bit.
        args += ["--dtype", "auto", "--quantization", "fp8"]
    elif dtype in ("fp8", "int4"):
        # A quantized checkpoint: vLLM reads its quantization_config.
        args += ["--dtype", "auto"]
    else:
        args += ["--dtype", dtype]
    if plan["device"] == "cuda":
        args += ["--gpu-memory-utilization", _fmt(plan["gpu_memory_utilization"])]
    else:
        # Each worker's KV cache, in bytes: vLLM's own setting, finer than the CPU build's VLLM_CPU_KVCACHE_SPACE
        # (whole GiB), which would override it and which the launch therefore never sets.
        args += ["--kv-cache-memory-bytes", str(cpu_kv_cache_bytes(plan["cpu_kvcache_space_gib"]))]
    args += ["--max-num-seqs", str(plan["max_num_seqs"])]
    if plan["tensor_parallel_size"] > 1:
        args += ["--tensor-parallel-size", str(plan["tensor_parallel_size"])]
    if plan["topology"] == "vllm_dp":
        args += ["--data-parallel-size", str(plan["data_parallel_size"])]
    group = plan.get("group")
    if group:
        # vLLM's own multi-node launch: the leader (rank 0) serves, followers run headless.
        args += ["--pipeline-parallel-size", str(plan["pipeline_parallel_size"])]
        args += ["--nnodes", str(group["nnodes"]), "--node-rank", str(group["node_rank"])]
        args += ["--master-addr", group["master_addr"], "--master-port", str(group["master_port"])]
        if group["node_rank"] > 0:
            args.append("--headless")
    return args


def group_member(plan):
    """This server's entry in its group (``None`` without a group)."""
    group = plan.get("group")
    if not group:
        return None
    return next(member for member in group["members"] if member["rank"] == group["node_rank"])


def guard_argv(plan):
    """The group guard's options for this server's member (``group_guard``), ``[]`` without a group.

    The leader's guard listens on its own address at the group's port + 1; the
    followers' guards connect there. The same port plus one on every member.
    """
    group = plan.get("group")
    if not group:
        return []
    leader = group["node_rank"] == 0
    followers = [member["address"] for member in group["members"] if member["rank"] != 0]
    argv = ["--role", "leader" if leader else "follower", "--group", group["name"], "--rank", str(group["node_rank"])]
    argv += ["--nnodes", str(group["nnodes"]), "--address", group["master_addr"], "--port", str(group["master_port"] + 1)]
    if leader:
        argv += ["--members", ",".join(followers)]
    return argv


def instance_env(plan, instance, settings):
    """One instance's complete environment."""
    env = {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(card) for card in instance["gpus"]),
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "GPUFLEET_PORT": str(instance["port"]),
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(settings["http_keepalive_sec"]),
    }
    # The planner's own per-instance variables (NCCL_P2P_DISABLE for cards without P2P).
    env.update({k: str(v) for k, v in (instance.get("env") or {}).items() if k in PLANNER_ENV})
    member = group_member(plan)
    if member:
        # Between the group's servers: this member's own address, on the interface the plan names.
        env["VLLM_HOST_IP"] = member["address"]
        env["GLOO_SOCKET_IFNAME"] = plan["group"]["interface"]
        env["NCCL_SOCKET_IFNAME"] = plan["group"]["interface"]
    if plan["device"] == "cpu":
        # A planned card is a worker process (its KV cache: --kv-cache-memory-bytes, planned_arguments).
        if settings["cpu_bind_cores"]:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(card) for card in instance["gpus"])
        else:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env["OMP_NUM_THREADS"] = "1"
    if multicast_off(plan, settings):
        env.update(NO_MULTICAST_ENV)
    env.update(settings["extra_env"])
    return env


def multicast_off(plan, settings):
    """True when this launch turns NVLink multicast off: CUDA, tensor parallel, and allreduce_multicast false."""
    return plan["device"] == "cuda" and plan["tensor_parallel_size"] > 1 and not settings["allreduce_multicast"]


def instance_argv(plan, instance, settings):
    """One instance's vLLM arguments (after ``python -m vllm.entrypoints.openai.api_server``)."""
    argv = ["--model", settings["model_path"], "--served-model-name", settings["served_model_name"], "--host", settings["host"]]
    argv += ["--port", str(instance["port"])]
    argv += planned_arguments(plan)
    if settings["enforce_eager"]:
        argv.append("--enforce-eager")
    if settings["shutdown_timeout_sec"] > 0:
        argv += ["--shutdown-timeout", str(settings["shutdown_timeout_sec"])]
    if multicast_off(plan, settings):
        argv += list(NO_MULTICAST_ARGS)
    if settings["scale_out"]:
        # The render endpoints (/v1/completions/render, /v1/chat/completions/render) that vLLM's router
        # (a cache-aware pool of the fleet tier) asks before it picks an instance.
        argv.append("--enable-scale-out")
    return argv + list(settings["extra_args"])


def build_launch(plan, settings, prefix=""):
    """The plan with each instance's ``argv`` and ``env``, and the settings used under ``launch``.

    ``plan``: a plan from ``vllm_planner.plan`` (with ``device``, ``max_num_seqs``
    and, on the CPU build, ``cpu_kvcache_space_gib``); ``settings``: the launch
    settings (``DEFAULT_SETTINGS`` fills the gaps). Returns a new dict.
    """
    checked = check_settings(settings, prefix)
    if not checked["served_model_name"]:
        raise LaunchError("served_model_name", "%sserved_model_name is empty" % prefix)
    out = dict(plan)
    out["launch"] = dict(checked, entrypoint=list(ENTRYPOINT))
    instances = []
    for instance in plan["instances"]:
        item = dict(instance)
        item["argv"] = instance_argv(plan, instance, checked)
        item["env"] = instance_env(plan, instance, checked)
        if plan.get("group"):
            item["guard_argv"] = guard_argv(plan)
            item["role"] = "leader" if plan["group"]["node_rank"] == 0 else "follower"
        item["launch_sha1"] = launch_digest(item["argv"], item["env"], item.get("guard_argv") or ())
        instances.append(item)
    out["instances"] = instances
    check_plan(out, prefix)
    return out


def launch_digest(argv, env, guard=()):
    """A short fingerprint of one instance's launch (its environment file carries it, so a changed launch is stale).

    ``guard``: a group member's guard options (its followers' addresses, for one), left out when empty.
    """
    launch = {"argv": list(argv), "env": dict(env)}
    if guard:
        launch["guard"] = list(guard)
    text = json.dumps(launch, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# Checking a plan (also one given by hand to the vllm role)
# ---------------------------------------------------------------------------


def _option_values(argv):
    """{option: [values]} of an argument vector (flags map to [None]); both ``--x v`` and ``--x=v``."""
    values = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        option = argument_name(arg)
        if option is None:
            i += 1
            continue
        if "=" in arg:
            values.setdefault(option, []).append(arg.split("=", 1)[1])
            i += 1
        elif i + 1 < len(argv) and argument_name(argv[i + 1]) is None:
            values.setdefault(option, []).append(argv[i + 1])
            i += 2
        else:
            values.setdefault(option, []).append(None)
            i += 1
    return values


def launch_mismatches(plan):
    """Differences between each instance's argv/env and the plan's own fields, as sentences (empty: they agree).

    This is the field-by-field check that what vLLM is told is what the planner computed with.
    """
    problems = []
    for instance in plan.get("instances") or []:
        name = instance.get("name")
        values = _option_values(instance.get("argv") or [])
        env = instance.get("env") or {}
        expected = {"--port": [str(instance.get("port"))]}
        planned = _option_values(planned_arguments(plan))
        expected.update(planned)
        for option in PLANNED_ARGS:
            if option not in expected and option not in LAUNCH_SETTING_ARGS:
                expected[option] = []
        for option, want in sorted(expected.items()):
            got = values.get(option, [])
            if got != want:
                problems.append("instance %s: %s is %s in its arguments but %s in the plan" % (name, option, got or "absent", want or "absent"))
        cards = ",".join(str(card) for card in instance.get("gpus") or [])
        if env.get("CUDA_VISIBLE_DEVICES") != cards:
            problems.append("instance %s: CUDA_VISIBLE_DEVICES is %r but the plan gives it cards %r" % (name, env.get("CUDA_VISIBLE_DEVICES"), cards))
        if env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            problems.append("instance %s: CUDA_DEVICE_ORDER must be PCI_BUS_ID (NVML's numbering), not %r" % (name, env.get("CUDA_DEVICE_ORDER")))
        if "VLLM_CPU_KVCACHE_SPACE" in env:
            problems.append(
                "instance %s: VLLM_CPU_KVCACHE_SPACE is set (%r): vLLM's CPU build would take it over --kv-cache-memory-bytes, the plan's %r GiB"
                % (name, env["VLLM_CPU_KVCACHE_SPACE"], plan.get("cpu_kvcache_space_gib"))
            )
        if "launch_sha1" in instance and instance["launch_sha1"] != launch_digest(instance.get("argv") or [], env, instance.get("guard_argv") or ()):
            problems.append("instance %s: launch_sha1 is not the fingerprint of its argv and env (edited by hand?)" % name)
        if env.get("GPUFLEET_PORT") != str(instance.get("port")):
            problems.append("instance %s: GPUFLEET_PORT is %r but its port is %r" % (name, env.get("GPUFLEET_PORT"), instance.get("port")))
    return problems


def _check_plan_shape(plan, where):
    """A plan with instances and the figures a launch is built from, for a device this collection launches on."""
    if not isinstance(plan, dict) or not isinstance(plan.get("instances"), list) or not plan["instances"]:
        raise LaunchError("plan", "%s must be a plan from gpufleet.serving.vllm_plan with at least one instance" % where)
    for key in ("topology", "device", "dtype", "max_model_len", "max_num_seqs", "tensor_parallel_size", "data_parallel_size"):
        if key not in plan:
            raise LaunchError("plan", "%s has no %s: make it again with gpufleet.serving.vllm_plan (this collection's version)" % (where, key))
    if plan["device"] not in DEVICES:
        raise LaunchError("device", "%s device must be cuda or cpu, not %r" % (where, plan["device"]))
    space = plan.get("cpu_kvcache_space_gib")
    if plan["device"] == "cpu" and (isinstance(space, bool) or not isinstance(space, (int, float)) or not MIN_CPU_KVCACHE_GIB <= space <= MAX_CPU_KVCACHE_GIB):
        raise LaunchError(
            "cpu_kvcache_space_gib",
            "%s cpu_kvcache_space_gib must be a number of GiB from %g to %d for the CPU build, not %r"
            % (where, MIN_CPU_KVCACHE_GIB, MAX_CPU_KVCACHE_GIB, space),
        )


def _instance_name(instance, where):
    name = instance.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_-]{1,32}$", name):
        raise LaunchError("plan", "%s: instance name %r must be 1-32 letters, digits, _ or - (it names a systemd unit)" % (where, name))
    return name


def _instance_port(instance, name, where, prefix):
    port = instance.get("port")
    if not _is_int(port) or not 1024 <= port <= 65535:
        raise LaunchError(
            "base_port",
            "%s: instance %s has port %r; vLLM runs unprivileged, so ports must lie in 1024-65535: choose %sbase_port so that every "
            "instance's port does" % (where, name, port, prefix),
        )
    return port


def _instance_cards(instance, name, where):
    gpus = instance.get("gpus")
    if not isinstance(gpus, list) or not gpus or not all(_is_int(card) and card >= 0 for card in gpus):
        raise LaunchError("plan", "%s: instance %s must name its cards as a list of indices, not %r" % (where, name, gpus))
    return gpus


def _check_instance_words(instance, name, where):
    """No control character in an argument or variable, and an environment an environment file carries safely."""
    for word in list(instance.get("argv") or []) + [k + "=" + str(v) for k, v in (instance.get("env") or {}).items()]:
        if not isinstance(word, str) or CONTROL_RE.search(word):
            raise LaunchError("plan", "%s: instance %s has an argument or variable with a control character: %r" % (where, name, word))
    for key, value in (instance.get("env") or {}).items():
        if not ENV_KEY_RE.match(str(key)) or not ENV_VALUE_RE.match(str(value)):
            raise LaunchError("extra_env", "%s: instance %s has environment %s=%r, which an environment file cannot carry safely" % (where, name, key, value))


def _check_group_fields(group, where):
    """The group's own fields: name, sizes, leader's address and port, interface."""
    if not isinstance(group, dict):
        raise LaunchError("gpufleet_server_group", "%s: group must be a mapping from gpufleet.serving.vllm_plan, not %r" % (where, group))
    if not isinstance(group.get("name"), str) or not GROUP_NAME_RE.match(group["name"]):
        raise LaunchError("gpufleet_server_group", "%s: group name %r must be 1-40 of a-z, 0-9, _ and -, first a letter or digit" % (where, group.get("name")))
    nnodes = group.get("nnodes")
    if not _is_int(nnodes) or not 2 <= nnodes <= MAX_GROUP_NODES:
        raise LaunchError("gpufleet_server_group", "%s: group nnodes %r must be 2-%d" % (where, nnodes, MAX_GROUP_NODES))
    if not _is_int(group.get("node_rank")) or not 0 <= group["node_rank"] < nnodes:
        raise LaunchError("gpufleet_server_group", "%s: group node_rank %r must be 0-%d" % (where, group.get("node_rank"), nnodes - 1))
    if not isinstance(group.get("master_addr"), str) or not ADDRESS_RE.match(group["master_addr"]):
        raise LaunchError("gpufleet_group_address", "%s: group master_addr %r is not a host address" % (where, group.get("master_addr")))
    port = group.get("master_port")
    if not _is_int(port) or not 1024 <= port <= 65534:
        raise LaunchError("gpufleet_group_port", "%s: group master_port %r must be 1024-65534 (the guard listens on the next port)" % (where, port))
    if not isinstance(group.get("interface"), str) or not INTERFACE_RE.match(group["interface"]):
        raise LaunchError("gpufleet_group_interface", "%s: interface %r is not an interface name (1-15 of A-Za-z0-9_.:-)" % (where, group.get("interface")))


def _ip_literal(text):
    """True for an IPv4 or IPv6 address without a zone: what IPAddressAllow= and the group guard compare peers with."""
    if not isinstance(text, str) or not ADDRESS_RE.match(text) or "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_group_members(group, where):
    """Every rank once, each with a host and an address; rank 0's address is the leader's."""
    members = group.get("members")
    if not isinstance(members, list) or len(members) != group["nnodes"]:
        raise LaunchError("gpufleet_server_group", "%s: group members must list its %d servers, not %r" % (where, group["nnodes"], members))
    ranks = set()
    for member in members:
        if not isinstance(member, dict) or not _is_int(member.get("rank")) or not 0 <= member["rank"] < group["nnodes"] or member["rank"] in ranks:
            raise LaunchError("gpufleet_server_group", "%s: group member %r needs a rank of its own in 0-%d" % (where, member, group["nnodes"] - 1))
        ranks.add(member["rank"])
        if not _ip_literal(member.get("address")):
            raise LaunchError(
                "gpufleet_group_address",
                "%s: group member %r needs an IP address (the units let peers in by address), not %r" % (where, member.get("host"), member.get("address")),
            )
        if not isinstance(member.get("host"), str) or not NAME_RE.match(member["host"]):
            raise LaunchError("gpufleet_server_group", "%s: group member %r has no usable host name" % (where, member.get("host")))
        if member["rank"] == 0 and member["address"] != group["master_addr"]:
            raise LaunchError("gpufleet_group_address", "%s: group master_addr %r is not rank 0's %r" % (where, group["master_addr"], member["address"]))


def check_group(plan, where):
    """LaunchError for a group (topology pp) that vLLM's multi-node launch cannot run as planned."""
    group = plan.get("group")
    if plan["topology"] != "pp":
        if group:
            raise LaunchError("plan", "%s: only topology pp has a group, not %s" % (where, plan["topology"]))
        return
    _check_group_fields(group, where)
    _check_group_members(group, where)
    if plan.get("pipeline_parallel_size") != group["nnodes"]:
        raise LaunchError("plan", "%s: pipeline_parallel_size %r must be the group's nnodes %d" % (where, plan.get("pipeline_parallel_size"), group["nnodes"]))
    if len(plan["instances"]) != 1:
        raise LaunchError("plan", "%s: a group member runs one instance, not %d" % (where, len(plan["instances"])))
    instance = plan["instances"][0]
    role = "leader" if group["node_rank"] == 0 else "follower"
    if "guard_argv" in instance and (instance["guard_argv"] != guard_argv(plan) or instance.get("role") != role):
        raise LaunchError("plan", "%s: the %s's guard options or role are not its group's (edited by hand?): plan again" % (where, role))


def check_plan(plan, prefix=""):
    """LaunchError for a plan that cannot be launched: shared cards or ports, ports out of range, unsafe words, disagreeing figures."""
    where = prefix + "plan" if prefix else "plan"
    _check_plan_shape(plan, where)
    check_group(plan, where)
    owner = {}
    ports = {}
    for instance in plan["instances"]:
        name = _instance_name(instance, where)
        port = _instance_port(instance, name, where, prefix)
        if port in ports:
            raise LaunchError("base_port", "%s: instances %s and %s share port %d: give each its own (%sbase_port)" % (where, ports[port], name, port, prefix))
        ports[port] = name
        for card in _instance_cards(instance, name, where):
            if card in owner:
                raise LaunchError(
                    "plan",
                    "%s: card %d is given to instance %s and to instance %s; two vLLM processes on one card run out of memory: "
                    "plan again (%stopology, %stensor_parallel_size) instead of editing instances" % (where, card, owner[card], name, prefix, prefix),
                )
            owner[card] = name
        _check_instance_words(instance, name, where)
    if "argv" in plan["instances"][0]:
        problems = launch_mismatches(plan)
        if problems:
            raise LaunchError("plan", "%s: its launch disagrees with its figures: %s" % (where, "; ".join(problems)))


# ---------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------


def systemd_quote(word):
    """One word for systemd's ExecStart=: quoted when needed; '%' doubled (specifiers) and '$' doubled (variables).

    systemd splits ExecStart= on whitespace, honours double quotes with C-style
    backslash escapes inside, and expands %-specifiers and $VARIABLES even inside
    quotes. Control characters are refused (the caller validates them first).
    """
    if not isinstance(word, str):
        raise TypeError("systemd_quote takes a string, not %r" % (word,))
    if CONTROL_RE.search(word):
        raise ValueError("%r holds a control character, which an ExecStart= line cannot carry" % (word,))
    escaped = word.replace("%", "%%").replace("$", "$$")
    if PLAIN_WORD_RE.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(python, argv):
    """The ExecStart= value that runs ``python -m vllm.entrypoints.openai.api_server`` with ``argv``."""
    if not isinstance(python, str) or not PATH_RE.match(python):
        raise ValueError("the interpreter must be an absolute path of plain characters, not %r" % (python,))
    return " ".join([python, *ENTRYPOINT] + [systemd_quote(word) for word in argv])


def instance_command(python, instance, headless=""):
    """The words that run one instance: vLLM's OpenAI server, or a group follower's ``vllm serve --headless`` (``headless``: its launcher)."""
    if instance.get("role") == "follower":
        if not isinstance(headless, str) or not PATH_RE.match(headless):
            raise ValueError("a follower needs the absolute path of the headless launcher, not %r" % (headless,))
        return [python, "-I", "-s", headless, *instance["argv"]]
    return [python, *ENTRYPOINT, *instance["argv"]]


def instance_exec_start(python, instance, guard="", headless=""):
    """ExecStart= of one planned instance: its command, under the group guard when it is a member of a group.

    ``guard`` and ``headless``: absolute paths of the launchers the vllm role installs (needed only in a group).
    """
    if not isinstance(python, str) or not PATH_RE.match(python):
        raise ValueError("the interpreter must be an absolute path of plain characters, not %r" % (python,))
    words = instance_command(python, instance, headless)
    if instance.get("guard_argv"):
        if not isinstance(guard, str) or not PATH_RE.match(guard):
            raise ValueError("a group member needs the absolute path of the group guard, not %r" % (guard,))
        words = [python, "-I", "-s", guard, *instance["guard_argv"], "--", *words]
    return " ".join(systemd_quote(word) for word in words)


def systemd_split(line):
    """Words of an ExecStart= value as systemd 252 reads them (specifiers and variables unexpanded, '%%'/'$$' undoubled).

    The inverse of ``exec_start`` for tests and for reading an installed drop-in.
    """
    words = []
    i = 0
    n = len(line)
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " ", "a": "\a", "b": "\b", "f": "\f", "r": "\r", "v": "\v", "s": " "}
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        word = []
        quote = None
        while i < n:
            ch = line[i]
            if quote is None and ch in " \t":
                break
            if ch == "\\" and i + 1 < n:
                nxt = line[i + 1]
                if nxt not in escapes:
                    raise ValueError("unknown escape \\%s in %r" % (nxt, line))
                word.append(escapes[nxt])
                i += 2
                continue
            if quote is None and ch in "\"'":
                quote = ch
            elif ch == quote:
                quote = None
            else:
                word.append(ch)
            i += 1
        if quote is not None:
            raise ValueError("unbalanced quotes in %r" % (line,))
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words
