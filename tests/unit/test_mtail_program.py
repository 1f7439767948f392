"""The mtail program of roles/monitoring, run by the real mtail on access-log lines nginx would write.

mtail is Debian 12's (3.0.0~rc50; `make promtool` unpacks it into
.cache/promtool beside promtool): a missing binary fails these tests. The log
lines are built from the gpufleet_upstream log_format of the gateway's nginx
template itself, so a change of that format that the program does not follow
fails here rather than leaving the nginx panels and alerts without data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MTAIL = ROOT / ".cache" / "promtool" / "bin" / "mtail"
PROGRAM_DIR = ROOT / "roles" / "monitoring" / "files" / "mtail"
PROGRAM = PROGRAM_DIR / "gpufleet-nginx.mtail"
NGINX_TEMPLATE = ROOT / "roles" / "gateway" / "templates" / "gpufleet.conf.j2"

# The names of the shared contract (tests/unit/test_monitoring_rules.py's CONTRACT_NAMES) that mtail serves.
MTAIL_NAMES = {
    "gpufleet_nginx_responses_total",
    "gpufleet_nginx_upstream_header_seconds_bucket",
    "gpufleet_nginx_upstream_header_seconds_sum",
    "gpufleet_nginx_upstream_header_seconds_count",
}
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def mtail(*args):
    """mtail's result; its HTTP listener (opened even by --compile_only and --one_shot) on a free loopback port."""
    if not MTAIL.is_file():
        pytest.fail("%s is missing: run `make promtool` (the unit targets of the Makefile do)" % MTAIL.relative_to(ROOT))
    command = [str(MTAIL), *args, "--logtostderr", "--address", "127.0.0.1", "--port", "0"]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60, cwd=str(ROOT))


# --- access-log lines -----------------------------------------------------


def log_format():
    """The gpufleet_upstream log_format of the nginx template, its quoted pieces joined."""
    match = re.search(r"^\s*log_format\s+gpufleet_upstream\s+((?:'[^']*'\s*)+);", NGINX_TEMPLATE.read_text(), re.M)
    assert match, "no `log_format gpufleet_upstream '...';` in %s" % NGINX_TEMPLATE.relative_to(ROOT)
    return "".join(re.findall(r"'([^']*)'", match.group(1)))


def access_line(port, status, uht, request="POST /v1/completions HTTP/1.1", us=None, ua="127.0.0.1:8001"):
    """One access-log line as nginx writes it with the gpufleet_upstream format (values already escaped)."""
    values = {
        "remote_addr": "10.89.0.5",
        "time_local": "02/Dec/2026:00:31:07 +0000",
        "server_port": str(port),
        "request": request,
        "status": str(status),
        "body_bytes_sent": "512",
        "request_time": "0.734",
        "upstream_connect_time": "0.000",
        "upstream_header_time": uht,
        "upstream_response_time": "0.733",
        "upstream_addr": ua,
        "upstream_status": str(status) if us is None else us,
        "gpufleet_rid": "3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7",
    }

    def value(match):
        if match.group(1) not in values:
            pytest.fail("the log_format uses $%s, which access_line() does not know: teach it, and the mtail program" % match.group(1))
        return values[match.group(1)]

    return re.sub(r"\$(\w+)", value, log_format())


# (line, port, status, the upstream header time the histogram observes or None)
CASES = [
    (access_line(8000, 200, "0.701"), "8000", "200", 0.701),
    # A retry on the next server: the first try sent no header, the second answered.
    (access_line(8000, 200, "-, 0.455", us="502, 200", ua="127.0.0.1:8001, 127.0.0.1:8002"), "8000", "200", 0.455),
    (access_line(8000, 429, "0.002"), "8000", "429", 0.002),
    # No upstream sent a header: counted, not observed.
    (access_line(8000, 503, "-", us="502"), "8000", "503", None),
    # An internal redirect: the header of the second location's upstream.
    (access_line(8001, 200, "0.1 : 0.2", us="200 : 200", ua="127.0.0.1:8001 : 127.0.0.1:8003"), "8001", "200", 0.2),
    # Exactly on a bucket's bound: counted in that bucket (le is inclusive).
    (access_line(8001, 200, "0.500", request="GET /v1/models?q=\\x22a b\\x22\\x5C HTTP/1.1"), "8001", "200", 0.5),
    (access_line(8001, 200, "12.500"), "8001", "200", 12.5),
    # A request line nginx could not parse: no upstream, still a response.
    (access_line(8001, 400, "-", request="-", us="-", ua="-"), "8001", "400", None),
    (access_line(8001, 400, "-", request="\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xFC\\x03\\x03", us="-", ua="-"), "8001", "400", None),
    (access_line(8002, 503, "-", us="-", ua="-"), "8002", "503", None),
]
# Lines of another shape: counted in no metric, and no error.
JUNK = [
    "",
    "not an access-log line",
    access_line(8000, 200, "0.300").rsplit(" rid=", 1)[0],
    '10.89.0.5 - - [02/Dec/2026:00:31:07 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1"',
]


# --- the exposition -------------------------------------------------------

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$")
LABEL = re.compile(r'\s*([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def samples(text):
    """(name, {label: value}, value) of every sample line of a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        labels = dict(LABEL.findall(match.group("labels") or ""))
        found.append((match.group("name"), labels, float(match.group("value"))))
    return found


@pytest.fixture(scope="module")
def exposition(tmp_path_factory):
    """mtail's --one_shot exposition of CASES and JUNK, the program alone in its folder."""
    tmp = tmp_path_factory.mktemp("mtail")
    progs = tmp / "progs"
    progs.mkdir()
    shutil.copy(PROGRAM, progs / PROGRAM.name)
    log = tmp / "access.log"
    lines = [case[0] for case in CASES] + JUNK
    log.write_text("".join(line + "\n" for line in lines))
    out = mtail("--one_shot", "--one_shot_format", "prometheus", "--progs", str(progs), "--logs", str(log))
    assert out.returncode == 0, out.stderr
    # mtail logs an error of its VM (a string given to a histogram) and goes on: the exit status stays 0.
    assert "Runtime error" not in out.stderr, out.stderr
    return out.stdout


def test_every_sample_is_labelled_with_the_program(exposition):
    progs = {labels.get("prog") for _name, labels, _value in samples(exposition)}
    assert progs == {PROGRAM.name}


def test_metric_names_are_those_of_the_contract(exposition):
    assert {name for name, _labels, _value in samples(exposition)} == MTAIL_NAMES


def test_every_line_counts_by_port_and_status(exposition):
    expected = {}
    for _line, port, status, _seconds in CASES:
        expected[(port, status)] = expected.get((port, status), 0) + 1
    counted = {(labels["port"], labels["status"]): value for name, labels, value in samples(exposition) if name == "gpufleet_nginx_responses_total"}
    assert counted == expected


def _observed():
    """{port: [upstream header times]} as CASES say the histogram observes them."""
    observed = {}
    for _line, port, _status, seconds in CASES:
        if seconds is not None:
            observed.setdefault(port, []).append(seconds)
    return observed


def _histogram_series(exposition, suffix):
    name = "gpufleet_nginx_upstream_header_seconds" + suffix
    return [(labels, value) for sample_name, labels, value in samples(exposition) if sample_name == name]


def test_histogram_count_and_sum_by_port(exposition):
    observed = _observed()
    counts = {labels["port"]: value for labels, value in _histogram_series(exposition, "_count")}
    sums = {labels["port"]: value for labels, value in _histogram_series(exposition, "_sum")}
    # A port whose lines have no upstream header (8002) has no series.
    assert counts == {port: len(values) for port, values in observed.items()}
    assert set(sums) == set(observed)
    for port, values in observed.items():
        assert sums[port] == pytest.approx(sum(values)), port


def test_histogram_buckets_by_port(exposition):
    buckets = {}
    for labels, value in _histogram_series(exposition, "_bucket"):
        buckets.setdefault(labels["port"], {})[float(labels["le"])] = value
    expected = {port: {le: sum(1 for v in values if v <= le) for le in BUCKETS} for port, values in _observed().items()}
    assert buckets == expected


# --- compiling ------------------------------------------------------------


def test_mtail_compiles_the_programs():
    out = mtail("--compile_only", "--progs", str(PROGRAM_DIR))
    assert out.returncode == 0, out.stderr
    assert "compile failed" not in out.stderr


def test_mtail_refuses_a_program_with_a_syntax_error(tmp_path):
    """The check above can fail: the same program less its last closing brace is refused."""
    text = PROGRAM.read_text()
    assert text.rstrip().endswith("}")
    (tmp_path / PROGRAM.name).write_text(text.rstrip()[:-1])
    out = mtail("--compile_only", "--progs", str(tmp_path))
    assert out.returncode != 0
    assert "compile failed" in out.stderr and "syntax error" in out.stderr, out.stderr
