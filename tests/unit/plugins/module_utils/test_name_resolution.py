"""name_resolution: names resolve as the host resolves them, each within its time limit; bad names are refused."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import name_resolution
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError


def info(address, family=socket.AF_INET):
    return (family, socket.SOCK_STREAM, 6, "", (address, 0))


def fake_resolver(table, slow=(), release=None):
    """getaddrinfo over a table; names in ``slow`` block until ``release`` is set; others raise gaierror."""

    def getaddrinfo(name, port, type=0):
        assert port is None and type == socket.SOCK_STREAM
        if name in slow:
            release.wait(30)
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[name]

    return getaddrinfo


def test_names_resolve_to_their_distinct_addresses_in_order():
    table = {"gpu1": [info("10.0.0.11"), info("10.0.0.11"), info("fd00::11", socket.AF_INET6)], "gw": [info("10.0.0.2")]}
    found, timed_out = name_resolution.resolve(["gpu1", "gw"], 5, fake_resolver(table))
    assert found == {"gpu1": ["10.0.0.11", "fd00::11"], "gw": ["10.0.0.2"]}
    assert timed_out == []


def test_a_name_that_does_not_resolve_has_no_address():
    found, timed_out = name_resolution.resolve(["gone.example.net", "gw"], 5, fake_resolver({"gw": [info("10.0.0.2")]}))
    assert found == {"gone.example.net": [], "gw": ["10.0.0.2"]}
    assert timed_out == []


def test_a_name_that_does_not_answer_in_time_has_no_address_and_is_named():
    release = threading.Event()
    try:
        began = time.monotonic()
        found, timed_out = name_resolution.resolve(
            ["slow1", "gw", "slow2"], 0.3, fake_resolver({"gw": [info("10.0.0.2")], "slow1": [info("10.0.0.9")]}, {"slow1", "slow2"}, release)
        )
        took = time.monotonic() - began
    finally:
        release.set()
    assert found == {"slow1": [], "gw": ["10.0.0.2"], "slow2": []}
    assert timed_out == ["slow1", "slow2"]
    assert took < 2  # the slow names are waited for together, not one after the other


def test_resolver_errors_other_than_oserror_are_no_address():
    def broken(name, port, type=0):
        raise UnicodeError("label too long")

    assert name_resolution.resolve(["x"], 1, broken) == ({"x": []}, [])


def test_duplicate_names_are_looked_up_once():
    calls = []

    def counting(name, port, type=0):
        calls.append(name)
        return [info("10.0.0.1")]

    found = name_resolution.resolve(["a", "a", "b"], 5, counting)[0]
    assert sorted(calls) == ["a", "b"] and list(found) == ["a", "b"]


def test_addresses_resolve_to_themselves_with_the_real_resolver():
    found, timed_out = name_resolution.resolve(["127.0.0.1", "::1", "192.0.2.7"], 5)
    assert found == {"127.0.0.1": ["127.0.0.1"], "::1": ["::1"], "192.0.2.7": ["192.0.2.7"]}
    assert timed_out == []


def test_localhost_resolves_with_the_real_resolver():
    found = name_resolution.resolve(["localhost"], 5)[0]
    assert found["localhost"] and set(found["localhost"]) <= {"127.0.0.1", "::1"}


def test_a_name_under_invalid_does_not_resolve_with_the_real_resolver():
    found, _timed_out = name_resolution.resolve(["gpufleet-no-such-host.invalid"], 3)
    assert found == {"gpufleet-no-such-host.invalid": []}


def test_many_addresses_are_capped():
    table = {"big": [info("10.0.%d.%d" % (i // 250, i % 250)) for i in range(500)]}
    found = name_resolution.resolve(["big"], 5, fake_resolver(table))[0]
    assert len(found["big"]) == name_resolution.MAX_ADDRESSES


@pytest.mark.parametrize("name", ["gpu1", "gpu_1", "gpu-1.example.net", "gpu1.example.net.", "10.0.0.12", "fd00::12", "fe80::1%eth0", "a" * 63])
def test_host_names_and_addresses_are_accepted(name):
    name_resolution.check_inputs([name], 10)


@pytest.mark.parametrize(
    "names, timeout, option",
    [
        (["gpu 1"], 10, "names"),
        (["gpu1\n"], 10, "names"),
        (["-gpu1"], 10, "names"),
        (["gpu1-"], 10, "names"),
        (["gpu1..net"], 10, "names"),
        ([""], 10, "names"),
        (["a" * 64], 10, "names"),
        ([".".join(["a" * 60] * 5)], 10, "names"),
        (["gpu1;reboot"], 10, "names"),
        (["http://gpu1"], 10, "names"),
        (["n%d" % i for i in range(600)], 10, "names"),
        (["gpu1"], 0, "timeout"),
        (["gpu1"], -1, "timeout"),
        (["gpu1"], float("nan"), "timeout"),
        (["gpu1"], float("inf"), "timeout"),
        (["gpu1"], 1000, "timeout"),
    ],
)
def test_bad_inputs_are_refused_by_name(names, timeout, option):
    with pytest.raises(InputError, match=option):
        name_resolution.check_inputs(names, timeout)
