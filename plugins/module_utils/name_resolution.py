# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Host names resolved to addresses the way the host's own resolver does it, each within a time limit.

Used by the ``resolve_names`` module (the gateway role gives nginx addresses,
resolved on the host that connects or accepts). ``getaddrinfo`` has no time
limit of its own, so each name is looked up on a daemon thread and given up
on after ``timeout`` seconds (all names at once, so the whole call takes about
one ``timeout``); a name that fails or times out resolves to no address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError

LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_RE = re.compile(r"^%s(?:\.%s)*\.?$" % (LABEL, LABEL))
MAX_NAMES = 512
MAX_NAME = 253
MAX_TIMEOUT = 120
MAX_ADDRESSES = 64


def is_address(name):
    """True for an IPv4 or IPv6 address literal (a scope such as fe80::1%eth0 included)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_inputs(names, timeout):
    """Refuse names that are neither host names nor addresses, too many names, or a timeout out of range."""
    if len(names) > MAX_NAMES:
        raise InputError("names lists %d names, more than %d" % (len(names), MAX_NAMES))
    for name in names:
        if len(name) > MAX_NAME or not (HOSTNAME_RE.fullmatch(name) or is_address(name)):
            raise InputError(
                "names: %r is neither a host name (labels of letters, digits, _ and - joined by dots, at most %d characters)"
                " nor an IP address; give the name or address this host should resolve" % (name[:80], MAX_NAME)
            )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise InputError("timeout must be a number of seconds above 0 and at most %d, not %r" % (MAX_TIMEOUT, timeout))


def addresses_of(infos):
    """The distinct addresses of getaddrinfo's answer, in its order (at most MAX_ADDRESSES)."""
    out = []
    for info in infos:
        address = info[4][0]
        if address not in out:
            out.append(address)
        if len(out) >= MAX_ADDRESSES:
            break
    return out


def resolve(names, timeout, getaddrinfo=None):
    """({name: [address, ...]} for every name, sorted list of the names that did not answer in time).

    A name the resolver does not know, or that timed out, maps to an empty list.
    ``getaddrinfo`` is ``socket.getaddrinfo`` unless a test gives another.
    """
    getaddrinfo = getaddrinfo or socket.getaddrinfo
    answers = {}

    def look_up(name):
        try:
            answers[name] = addresses_of(getaddrinfo(name, None, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError, ValueError):
            answers[name] = []

    unique = list(dict.fromkeys(names))
    threads = []
    for name in unique:
        thread = threading.Thread(target=look_up, args=(name,), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    found = {}
    timed_out = []
    for name in unique:
        if name in answers:
            found[name] = answers[name]
        else:
            found[name] = []
            timed_out.append(name)
    return found, sorted(timed_out)
