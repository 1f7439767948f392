# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read NVIDIA GPU facts from NVML, or from a saved NVML snapshot.

The work is split in two so that both halves can be tested without a GPU:

* ``collect_raw(nvml)`` asks a pynvml-like object every question and writes the
  answers, errors included, into a plain dict: the *snapshot*
  (format described in docs/nvml-snapshot.md; the same JSON that
  tests/fixtures/nvml/capture_nvml.py writes).
* ``facts_from_raw(raw, source)`` turns a snapshot into the ``nvidia_gpus``
  facts that the planner and the roles read.

``nvidia_gpu_facts()`` ties them together for the module.
"""

from __future__ import annotations

import ast
import json
import traceback
from collections import namedtuple

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import MIB, InputError, is_int, load_json

try:
    import pynvml

    HAS_PYNVML = True
    PYNVML_IMPORT_ERROR = None
except ImportError:
    pynvml = None
    HAS_PYNVML = False
    PYNVML_IMPORT_ERROR = traceback.format_exc()


CAPTURED_BY = "gpufleet.serving.nvidia_gpu_facts"

REASON_NO_LIBRARY = "nvidia-ml-py (pynvml) is not installed: install the nvidia-ml-py package for the Python interpreter that runs Ansible modules on this host"
REASON_NO_CARDS = "NVML found no NVIDIA cards"

# NVML_P2P_CAPS_INDEX_* values. nvidia-ml-py 13.x defines NVML_P2P_CAPS_INDEX_READ as
# the tuple (0,) (a stray comma in the binding), which ctypes refuses; the ABI
# values are fixed, so a tuple constant is unwrapped and a missing one defaulted.
P2P_CAPS = (("read", 0), ("write", 1), ("nvlink", 2), ("atomics", 3), ("prop", 4))

P2P_STATUS = {
    0: "ok",
    1: "chipset_not_supported",
    2: "gpu_not_supported",
    3: "topology_not_supported",
    4: "disabled_by_regkey",
    5: "not_supported",
    6: "unknown",
}

TOPOLOGY = {0: "internal", 10: "single", 20: "multiple", 30: "hostbridge", 40: "node", 50: "system"}

# nvmlDeviceArchitecture_t
ARCHITECTURE = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}

# nvmlNvlinkVersion_t -> NVLink generation (6 is NVLink 4.0, Hopper)
NVLINK_GENERATION = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5}

NVML_FEATURE_ENABLED = 1
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
DEFAULT_NVLINK_MAX_LINKS = 18

# Bounds of a snapshot: one server's cards, and what NVML reports for them.
MAX_SNAPSHOT_BYTES = 64 * MIB
MAX_DEVICES = 64
MAX_DEVICE_INDEX = 1023
MAX_PROCESSES = 4096
MAX_PROCESS_TEXT = 4096
MAX_NVLINKS = 64

# Errors that only mean "this card has no such thing": they become null without a warning.
QUIET_ERRORS = ("NVMLError_NotSupported",)


Readings = namedtuple("Readings", ["facts", "raw", "warnings"])
Readings.__doc__ = """What nvidia_gpu_facts() returns: the facts, the snapshot dict (None when NVML could not be used), warnings."""


class SnapshotError(ValueError):
    """A snapshot file that cannot be read or does not have the expected shape."""


# ---------------------------------------------------------------------------
# Collecting: pynvml-like object -> snapshot dict
# ---------------------------------------------------------------------------


def _error(exc):
    return {"error": type(exc).__name__, "msg": str(exc)}


def _plain(value):
    """Turn what pynvml returns (ctypes structures, friendly objects, bytes) into JSON data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return _plain_object(value)


def _plain_object(value):
    """A ctypes structure as a dict of its fields, another object as a dict of its public attributes, else its text."""
    fields = getattr(value, "_fields_", None)
    if fields is not None:
        return {field[0]: _plain(getattr(value, field[0])) for field in fields}
    if hasattr(value, "__dict__"):
        # pynvml's nvmlFriendlyObject (running processes, for one)
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def _ask(nvml, name, *args):
    """Call nvml.<name>(*args); an exception is recorded as {"error", "msg"} instead of raised."""
    func = getattr(nvml, name, None)
    if func is None:
        return {"error": "NVMLError_FunctionNotFound", "msg": "this pynvml has no %s" % name}
    try:
        return _plain(func(*args))
    except Exception as exc:  # every NVML failure is data here, never a crash
        return _error(exc)


def p2p_cap_index(nvml, name, default):
    """The integer NVML_P2P_CAPS_INDEX_<NAME>, unwrapping the (0,) tuple of nvidia-ml-py 13.x."""
    value = getattr(nvml, "NVML_P2P_CAPS_INDEX_" + name.upper(), default)
    if isinstance(value, (tuple, list)):
        value = value[0] if len(value) == 1 else default
    if not isinstance(value, int) or isinstance(value, bool):
        return default
    return value


def _collect_nvlink(nvml, handle):
    links = []
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", DEFAULT_NVLINK_MAX_LINKS)):
        state = _ask(nvml, "nvmlDeviceGetNvLinkState", handle, link)
        if isinstance(state, dict):
            links.append({"link": link, "state": state})
            continue
        links.append(
            {
                "link": link,
                "state": state,
                "version": _ask(nvml, "nvmlDeviceGetNvLinkVersion", handle, link),
                "remote_pci": _ask(nvml, "nvmlDeviceGetNvLinkRemotePciInfo", handle, link),
            }
        )
    return links


def _collect_device(nvml, index, handle):
    temperature_gpu = getattr(nvml, "NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU)
    numa = getattr(nvml, "nvmlDeviceGetNumaNodeId", None)
    return {
        "index": index,
        "name": _ask(nvml, "nvmlDeviceGetName", handle),
        "uuid": _ask(nvml, "nvmlDeviceGetUUID", handle),
        "serial": _ask(nvml, "nvmlDeviceGetSerial", handle),
        "minor_number": _ask(nvml, "nvmlDeviceGetMinorNumber", handle),
        "memory": _ask(nvml, "nvmlDeviceGetMemoryInfo", handle),
        "bar1": _ask(nvml, "nvmlDeviceGetBAR1MemoryInfo", handle),
        "pci": _ask(nvml, "nvmlDeviceGetPciInfo", handle),
        "pcie_gen_cur": _ask(nvml, "nvmlDeviceGetCurrPcieLinkGeneration", handle),
        "pcie_gen_max": _ask(nvml, "nvmlDeviceGetMaxPcieLinkGeneration", handle),
        "pcie_width_cur": _ask(nvml, "nvmlDeviceGetCurrPcieLinkWidth", handle),
        "pcie_width_max": _ask(nvml, "nvmlDeviceGetMaxPcieLinkWidth", handle),
        "compute_capability": _ask(nvml, "nvmlDeviceGetCudaComputeCapability", handle),
        "architecture": _ask(nvml, "nvmlDeviceGetArchitecture", handle),
        "brand": _ask(nvml, "nvmlDeviceGetBrand", handle),
        "persistence_mode": _ask(nvml, "nvmlDeviceGetPersistenceMode", handle),
        "compute_mode": _ask(nvml, "nvmlDeviceGetComputeMode", handle),
        "mig_mode": _ask(nvml, "nvmlDeviceGetMigMode", handle),
        "ecc_mode": _ask(nvml, "nvmlDeviceGetEccMode", handle),
        "power_limit_mw": _ask(nvml, "nvmlDeviceGetPowerManagementLimit", handle),
        "power_usage_mw": _ask(nvml, "nvmlDeviceGetPowerUsage", handle),
        "temperature_c": _ask(nvml, "nvmlDeviceGetTemperature", handle, temperature_gpu),
        "utilization": _ask(nvml, "nvmlDeviceGetUtilizationRates", handle),
        "clocks_max_sm": _ask(nvml, "nvmlDeviceGetMaxClockInfo", handle, getattr(nvml, "NVML_CLOCK_SM", NVML_CLOCK_SM)),
        "clocks_max_mem": _ask(nvml, "nvmlDeviceGetMaxClockInfo", handle, getattr(nvml, "NVML_CLOCK_MEM", NVML_CLOCK_MEM)),
        "vbios": _ask(nvml, "nvmlDeviceGetVbiosVersion", handle),
        "numa_node": None if numa is None else _ask(nvml, "nvmlDeviceGetNumaNodeId", handle),
        "processes": _ask(nvml, "nvmlDeviceGetComputeRunningProcesses", handle),
        "nvlink": _collect_nvlink(nvml, handle),
    }


def collect_raw(nvml):
    """Read everything the facts need (and a little more) from an initialised pynvml-like object.

    Returns the snapshot dict. Each answer NVML refuses is stored as
    {"error": <exception class name>, "msg": <text>}. Only nvmlDeviceGetCount and
    nvmlDeviceGetHandleByIndex may raise: without them there is nothing to read.
    """
    count = nvml.nvmlDeviceGetCount()
    raw = {
        "nvml_version": _ask(nvml, "nvmlSystemGetNVMLVersion"),
        "driver_version": _ask(nvml, "nvmlSystemGetDriverVersion"),
        "cuda_driver_version": _ask(nvml, "nvmlSystemGetCudaDriverVersion"),
        "device_count": count,
        "devices": [],
        "p2p": {},
        "topology": {},
    }
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    for index, handle in enumerate(handles):
        raw["devices"].append(_collect_device(nvml, index, handle))
    raw["p2p_caps_constants"] = {name: repr(getattr(nvml, "NVML_P2P_CAPS_INDEX_" + name.upper(), None)) for name, default in P2P_CAPS}
    caps = [(name, p2p_cap_index(nvml, name, default)) for name, default in P2P_CAPS]
    for i, first in enumerate(handles):
        for j, second in enumerate(handles):
            if i == j:
                continue
            key = "%d-%d" % (i, j)
            raw["p2p"][key] = {name: _ask(nvml, "nvmlDeviceGetP2PStatus", first, second, cap) for name, cap in caps}
            raw["topology"][key] = _ask(nvml, "nvmlDeviceGetTopologyCommonAncestor", first, second)
    raw["pynvml_module"] = getattr(nvml, "__file__", None)
    raw["captured_by"] = CAPTURED_BY
    return raw


def init_failure_reason(exc):
    """Say in words why nvmlInit failed: no driver, a driver half-installed, or something else."""
    name = type(exc).__name__
    if name == "NVMLError_LibraryNotFound":
        return "no NVIDIA driver: the NVML library (libnvidia-ml.so.1) was not found; install the NVIDIA driver on this host"
    if name == "NVMLError_DriverNotLoaded":
        return "no NVIDIA driver: the NVIDIA kernel module is not loaded; install the driver, or reboot after installing it"
    if name == "NVMLError_LibRmVersionMismatch":
        return "NVIDIA driver mismatch: the loaded kernel module and libnvidia-ml differ (%s); reboot after the driver upgrade" % exc
    return "NVML could not start: %s (%s)" % (exc, name)


def read_live(nvml):
    """Initialise NVML, collect a snapshot and shut NVML down.

    Returns (raw, None) on success or (None, reason) when NVML cannot be used.
    """
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return None, init_failure_reason(exc)
    try:
        return collect_raw(nvml), None
    except Exception as exc:
        return None, "NVML could not list the cards: %s (%s)" % (exc, type(exc).__name__)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing useful to do about a failed shutdown
            pass


# ---------------------------------------------------------------------------
# Snapshot files
# ---------------------------------------------------------------------------


def load_snapshot(path):
    """Read a snapshot JSON file; errors name the `snapshot` parameter."""
    try:
        raw = load_json(path, MAX_SNAPSHOT_BYTES, "file")
    except InputError as exc:
        raise SnapshotError("snapshot: cannot read %s as an NVML snapshot (JSON written by save_snapshot or capture_nvml.py): %s" % (path, exc)) from None
    check_snapshot(raw, "snapshot %s" % path)
    return raw


def _check_device_lists(device, where):
    """Bounds on a card's processes (count, and length of each one recorded as text) and its NVLink list."""
    processes = device.get("processes")
    if isinstance(processes, list):
        if len(processes) > MAX_PROCESSES:
            raise SnapshotError("%s.processes lists %d processes, more than %d" % (where, len(processes), MAX_PROCESSES))
        for number, entry in enumerate(processes):
            if isinstance(entry, str) and len(entry) > MAX_PROCESS_TEXT:
                raise SnapshotError(
                    "%s.processes[%d] is %d characters long, more than %d; capture the snapshot again" % (where, number, len(entry), MAX_PROCESS_TEXT)
                )
    nvlink = device.get("nvlink")
    if nvlink is not None and not _is_error(nvlink) and (not isinstance(nvlink, list) or len(nvlink) > MAX_NVLINKS):
        raise SnapshotError("%s.nvlink must be a list of at most %d links, not %r" % (where, MAX_NVLINKS, type(nvlink).__name__))


def check_snapshot(raw, where="snapshot"):
    """Raise SnapshotError unless raw has the keys facts_from_raw needs."""
    if not isinstance(raw, dict):
        raise SnapshotError("%s: expected a JSON object at the top level, found %s" % (where, type(raw).__name__))
    if not isinstance(raw.get("devices"), list):
        raise SnapshotError("%s: the 'devices' list is missing; is this a file written by save_snapshot or capture_nvml.py?" % where)
    if len(raw["devices"]) > MAX_DEVICES:
        raise SnapshotError("%s: 'devices' lists %d cards, more than the %d of one server; is this the right file?" % (where, len(raw["devices"]), MAX_DEVICES))
    seen = set()
    for position, device in enumerate(raw["devices"]):
        if not isinstance(device, dict) or not is_int(device.get("index"), 0, MAX_DEVICE_INDEX):
            raise SnapshotError("%s: devices[%d] has no integer 'index' (a card number from 0 to %d)" % (where, position, MAX_DEVICE_INDEX))
        if device["index"] in seen:
            raise SnapshotError(
                "%s: devices[%d] repeats card index %d: two cards cannot share a number; capture the snapshot again" % (where, position, device["index"])
            )
        seen.add(device["index"])
        _check_device_lists(device, "%s: devices[%d]" % (where, position))
    for key in ("p2p", "topology"):
        if not isinstance(raw.get(key, {}), dict):
            raise SnapshotError("%s: '%s' must be an object keyed 'i-j'" % (where, key))


def dump_snapshot(raw):
    """The text save_snapshot writes (indented JSON, like capture_nvml.py)."""
    return json.dumps(raw, indent=1, default=str) + "\n"


# ---------------------------------------------------------------------------
# Facts: snapshot dict -> nvidia_gpus
# ---------------------------------------------------------------------------


def _is_error(value):
    return isinstance(value, dict) and "error" in value


def _ok(value):
    """The value, or None where NVML answered with an error."""
    return None if _is_error(value) else value


def _int(value):
    value = _ok(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value):
    value = _ok(value)
    return value if isinstance(value, str) else None


def _bool(value):
    value = _int(value)
    return None if value is None else value == NVML_FEATURE_ENABLED


def cuda_version_string(value):
    """NVML's CUDA driver version integer as "major.minor": 13000 -> "13.0", 12040 -> "12.4"."""
    value = _int(value)
    if value is None or value <= 0:
        return None
    return "%d.%d" % (value // 1000, (value % 1000) // 10)


def compute_capability_string(value):
    value = _ok(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return "%d.%d" % (value[0], value[1])
    return None


def architecture_name(value, compute_capability=None):
    """Lower-case architecture name from NVML's enum, else guessed from the compute capability."""
    name = ARCHITECTURE.get(_int(value))
    if name is not None or compute_capability is None:
        return name
    parts = compute_capability.split(".")
    major, minor = parts[0], parts[-1]
    by_capability = {"3": "kepler", "5": "maxwell", "6": "pascal", "9": "hopper", "10": "blackwell", "12": "blackwell"}
    if major == "7":
        return "turing" if minor == "5" else "volta"
    if major == "8":
        return "ada" if minor == "9" else "ampere"
    return by_capability.get(major)


def _pair_of_bools(value):
    value = _ok(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [_bool(v) for v in value]
    return None


def _mig_mode(value):
    pair = _pair_of_bools(value)
    if pair is None or None in pair:
        return None
    return {"current": pair[0], "pending": pair[1]}


def _ecc_enabled(value):
    pair = _pair_of_bools(value)
    return None if pair is None else pair[0]


def _power_limit_watts(value):
    value = _int(value)
    return None if value is None else value / 1000.0


def _nvlink(links):
    links = links if isinstance(links, list) else []
    active = [link for link in links if isinstance(link, dict) and _int(link.get("state")) == NVML_FEATURE_ENABLED]
    generations = [NVLINK_GENERATION.get(_int(link.get("version"))) for link in active]
    generations = [g for g in generations if g is not None]
    return {"active_links": len(active), "version": max(generations) if generations else None}


def _process(entry):
    if isinstance(entry, str):
        # capture_nvml.py stores pynvml's process objects as their str(), a dict literal
        if len(entry) > MAX_PROCESS_TEXT:
            return None
        try:
            entry = ast.literal_eval(entry)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    if not isinstance(entry, dict) or _int(entry.get("pid")) is None:
        return None
    return {"pid": entry["pid"], "used_bytes": _int(entry.get("usedGpuMemory"))}


def _processes(value):
    value = _ok(value)
    if not isinstance(value, list):
        return []
    return [p for p in (_process(entry) for entry in value[:MAX_PROCESSES]) if p is not None]


def gpu_facts(device):
    """Facts for one card from its snapshot entry."""
    memory = _ok(device.get("memory"))
    memory = memory if isinstance(memory, dict) else {}
    pci = _ok(device.get("pci"))
    pci = pci if isinstance(pci, dict) else {}
    capability = compute_capability_string(device.get("compute_capability"))
    return {
        "index": device["index"],
        "uuid": _str(device.get("uuid")),
        "pci_bus_id": _str(pci.get("busId")),
        "name": _str(device.get("name")),
        "memory_total_bytes": _int(memory.get("total")),
        "memory_free_bytes": _int(memory.get("free")),
        "compute_capability": capability,
        "architecture": architecture_name(device.get("architecture"), capability),
        "pcie": {
            "gen_current": _int(device.get("pcie_gen_cur")),
            "gen_max": _int(device.get("pcie_gen_max")),
            "width_current": _int(device.get("pcie_width_cur")),
            "width_max": _int(device.get("pcie_width_max")),
        },
        "nvlink": _nvlink(device.get("nvlink")),
        "mig_mode": _mig_mode(device.get("mig_mode")),
        "persistence_mode": _bool(device.get("persistence_mode")),
        "ecc_enabled": _ecc_enabled(device.get("ecc_mode")),
        "power_limit_watts": _power_limit_watts(device.get("power_limit_mw")),
        "processes": _processes(device.get("processes")),
    }


def p2p_status_name(value):
    """An NVML P2P status (int, or a recorded error) as one of the contract's words."""
    if _is_error(value):
        return "not_supported" if value.get("error") == "NVMLError_NotSupported" else "unknown"
    return P2P_STATUS.get(_int(value), "unknown")


def interconnect(first, second, p2p):
    """nvlink, pcie_p2p or pcie_no_p2p for one ordered pair (see the facts contract)."""
    if first["nvlink"]["active_links"] > 0 and second["nvlink"]["active_links"] > 0 and p2p["nvlink"] == "ok":
        return "nvlink"
    if p2p["read"] == "ok" and p2p["write"] == "ok":
        return "pcie_p2p"
    return "pcie_no_p2p"


def pair_facts(gpus, p2p, topology):
    pairs = []
    by_index = {gpu["index"]: gpu for gpu in gpus}
    for i in sorted(by_index):
        for j in sorted(by_index):
            if i == j:
                continue
            key = "%d-%d" % (i, j)
            status = p2p.get(key)
            status = status if isinstance(status, dict) else {}
            words = {name: p2p_status_name(status.get(name)) for name in ("read", "write", "nvlink", "atomics")}
            pairs.append(
                {
                    "from": i,
                    "to": j,
                    "p2p": words,
                    "common_ancestor": TOPOLOGY.get(_int(topology.get(key))),
                    "interconnect": interconnect(by_index[i], by_index[j], words),
                }
            )
    return pairs


def unavailable_facts(reason, source="nvml", raw=None):
    raw = raw or {}
    return {
        "available": False,
        "reason": reason,
        "source": source,
        "driver_version": _str(raw.get("driver_version")),
        "cuda_driver_version": cuda_version_string(raw.get("cuda_driver_version")),
        "nvml_version": _str(raw.get("nvml_version")),
        "count": 0,
        "gpus": [],
        "pairs": [],
    }


def facts_from_raw(raw, source="nvml"):
    """The nvidia_gpus facts for a snapshot dict (live or loaded from a file)."""
    check_snapshot(raw)
    devices = sorted(raw["devices"], key=lambda device: device["index"])
    if not devices:
        return unavailable_facts(REASON_NO_CARDS, source, raw)
    gpus = [gpu_facts(device) for device in devices]
    return {
        "available": True,
        "reason": None,
        "source": source,
        "driver_version": _str(raw.get("driver_version")),
        "cuda_driver_version": cuda_version_string(raw.get("cuda_driver_version")),
        "nvml_version": _str(raw.get("nvml_version")),
        "count": len(gpus),
        "gpus": gpus,
        "pairs": pair_facts(gpus, raw.get("p2p") or {}, raw.get("topology") or {}),
    }


def raw_warnings(raw):
    """Readings NVML refused for a reason other than NotSupported (permissions, a lost GPU...)."""
    found = []

    def visit(value, where):
        if _is_error(value):
            # link numbers past a card's last link answer InvalidArgument: not worth a warning
            if value["error"] not in QUIET_ERRORS and not (where.endswith(".state") and value["error"] == "NVMLError_InvalidArgument"):
                found.append("%s: %s (%s)" % (where, value.get("msg"), value["error"]))
            return
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, "%s.%s" % (where, key) if where else str(key))
        elif isinstance(value, list):
            for position, item in enumerate(value):
                visit(item, "%s[%d]" % (where, position))

    for key in ("nvml_version", "driver_version", "cuda_driver_version", "devices", "p2p", "topology"):
        visit(raw.get(key), key)
    return found


def nvidia_gpu_facts(snapshot=None, nvml=None):
    """What the module returns, as Readings(facts, raw, warnings).

    snapshot: path of a snapshot to read instead of asking NVML.
    nvml: a pynvml-like object (default: the pynvml module when it is installed).
    raw is the snapshot dict (None when NVML could not be used); it is what
    save_snapshot writes.
    """
    if snapshot is not None:
        raw = load_snapshot(snapshot)
        return Readings(facts_from_raw(raw, "snapshot"), raw, raw_warnings(raw))
    if nvml is None:
        if not HAS_PYNVML:
            return Readings(unavailable_facts(REASON_NO_LIBRARY), None, [])
        nvml = pynvml
    raw, reason = read_live(nvml)
    if raw is None:
        return Readings(unavailable_facts(reason), None, [])
    return Readings(facts_from_raw(raw, "nvml"), raw, raw_warnings(raw))
