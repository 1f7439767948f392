"""box_measure against a fake vLLM: real processes, real HTTP, the real planner, launch, load generator and report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import box_measure, vllm_planner

ROOT = Path(__file__).resolve().parents[4]
FAKE = Path(__file__).with_name("fake_vllm_server.py")
LLAMA = ROOT / "tests" / "fixtures" / "models" / "Llama-3.1-8B"
H200X2 = ROOT / "tests" / "fixtures" / "nvml" / "h200x2-nvlink.nvml.json"
H100X1 = ROOT / "tests" / "fixtures" / "nvml" / "h100x1.nvml.json"


def free_port_pair():
    """A base port whose next two ports are free (the fake instances listen there)."""
    for _attempt in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and all(box_measure.port_free(p) for p in (port, port + 1, port + 2)):
            return port
    raise AssertionError("no free ports")


@pytest.fixture()
def fake_python(tmp_path):
    """An executable standing in for vLLM's interpreter: it runs the fake server with the same arguments."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, FAKE))
    path.chmod(0o755)
    return str(path)


@pytest.fixture()
def records(tmp_path):
    folder = tmp_path / "started"
    folder.mkdir()
    return folder


def options(tmp_path, fake_python, records, mode="ok", **extra):
    base = extra.pop("base_port", None) or free_port_pair()
    out = {
        "model": str(LLAMA),
        "out": str(tmp_path / "out"),
        "facts": str(H200X2),
        "python": fake_python,
        "topologies": ["dp"],
        "concurrency": [1, 2],
        "prompt_words": 8,
        "output_tokens": 4,
        "requests": 4,
        "warmup": 2,
        "base_port": base,
        "start_timeout": 20,
        "stop_grace": 5,
        "poll_interval": 0.1,
        "host": "box1",
        "set": ["plan_max_model_len=8192", 'plan_extra_env={"FAKE_VLLM_MODE": "%s", "FAKE_VLLM_RECORD_DIR": "%s"}' % (mode, records)],
    }
    out.update(extra)
    return out


def started(records):
    return {int(p.stem): json.loads(p.read_text()) for p in records.glob("*.json")}


def alive(pid):
    """Whether a process runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_all_gone(seen):
    pids = [pid for entry in seen.values() for pid in (entry["pid"], entry["child"])]
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "processes left behind"


def test_dp_two_instances_started_as_planned_loaded_reported_and_stopped(tmp_path, fake_python, records):
    opts = options(tmp_path, fake_python, records)
    logged = []
    outcome = box_measure.run(opts, log=logged.append)
    seen = started(records)
    base = opts["base_port"]
    assert sorted(seen) == [base, base + 1]

    # Each process got exactly the plan's argument vector and environment (vllm_launch.build_launch, via the planner).
    box = json.loads(Path(outcome["box"]).read_text())
    plan = box["plans"]["dp"]
    assert plan["topology"] == "dp" and [i["gpus"] for i in plan["instances"]] == [[0], [1]]
    for instance in plan["instances"]:
        got = seen[instance["port"]]
        assert got["argv"] == ["-m", "vllm.entrypoints.openai.api_server", *instance["argv"]]
        assert {k: got["env"].get(k) for k in instance["env"]} == instance["env"]
        assert got["env"]["CUDA_VISIBLE_DEVICES"] == str(instance["gpus"][0])
        assert got["env"]["VLLM_CACHE_ROOT"] == got["cwd"] == str(tmp_path / "out" / "cache" / instance["name"])

    # Readiness, vLLM's KV-cache figures read from each instance's log, the load at each level.
    dp = box["measured"][0]
    assert dp["failure"] is None and dp["ready_s"] > 0
    assert [e["reported_kv_tokens"] for e in dp["kv"]["instances"]] == [123456, 123456]
    assert {e["source"] for e in dp["kv"]["instances"]} == {"log"}
    assert all((tmp_path / "out" / e["log"]).is_file() for e in dp["instances"])
    assert [(r["concurrency"], r["summary"]["ok"], r["summary"]["failed"]) for r in dp["results"]] == [(1, 4, 0), (2, 4, 0)]
    assert all(r["summary"]["tpot_p50"] is not None for r in dp["results"])
    lines = (tmp_path / "out" / "dp" / "records-c2.jsonl").read_text().splitlines()
    urls = {json.loads(line)["url"] for line in lines}
    assert urls == {"http://127.0.0.1:%d" % base, "http://127.0.0.1:%d" % (base + 1)}

    # The bake-off's report and a measurement file the planner reads.
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| dp | 1 | 4 / 0 |" in report and "| dp | 2 | 4 / 0 |" in report
    assert "Start-up and KV cache" in report and "123,456 reported" in report
    assert "fewest in flight" in report
    measured = vllm_planner.load_measured(str(tmp_path / "out" / "measured.json"))
    entry = measured["measurements"][0]
    assert entry["host"] == "box1" and entry["model"] == "Llama-3.1-8B" and entry["max_model_len"] == 8192
    assert entry["winners"]["throughput"]["winner"] == "dp"
    assert outcome["failed"] == [] and outcome["winners"]["latency"] == "dp"
    # The file is what plan_measured reads: a plan with the same settings takes the measured winner.
    again = vllm_planner.plan(gpus=box_measure.read_facts(str(H200X2)), model=str(LLAMA), max_model_len=8192, measured=str(tmp_path / "out" / "measured.json"))
    assert again["source"] == "measured"

    assert_all_gone(seen)
    assert all(e["stopped"] == "terminated" for e in dp["instances"])


def test_a_warm_up_without_one_good_answer_fails_the_topology_and_still_stops_it(tmp_path, fake_python, records):
    opts = box_measure.check_options(options(tmp_path, fake_python, records))
    variables = {"plan_max_model_len": 8192, "plan_extra_env": {"FAKE_VLLM_RECORD_DIR": str(records)}}
    kwargs, launch = box_measure.planner_inputs(variables, opts["model"], opts["base_port"])
    [candidate] = box_measure.plan_candidates(["dp"], box_measure.read_facts(str(H200X2)), opts["model"], kwargs, launch)
    asked = []

    def refused_load(settings):
        asked.append(settings)
        return [
            {"i": i, "outcome": "http_503", "start": 1.0, "end": 2.0, "tokens": 0, "ttft": None, "tpot": None, "latency": 1.0} for i in range(settings["count"])
        ]

    logged = []
    out = box_measure.measure_topology(opts, candidate, logged.append, popen=subprocess.Popen, clock=time.monotonic, sleep=time.sleep, run=refused_load)
    assert out["failure"] == "no warm-up request succeeded ({'http_503': 2})"
    # Only the warm-up ran: no level was loaded, and both instances were stopped.
    assert out["results"] == [] and [(s["count"], s["concurrency"], s["seed"]) for s in asked] == [(2, 2, 0)]
    assert len(asked[0]["urls"]) == 2 and asked[0]["mix"] == "8:4"
    assert [e["stopped"] for e in out["instances"]] == ["terminated", "terminated"]
    assert_all_gone(started(records))


def test_a_failing_instance_is_reported_in_vllms_words_and_the_next_topology_still_runs(tmp_path, fake_python, records):
    base = free_port_pair()
    opts = options(tmp_path, fake_python, records, mode="exit_on:%d" % (base + 1), base_port=base, topologies=["dp", "tp"], concurrency=[1])
    outcome = box_measure.run(opts, log=lambda _text: None)
    assert outcome["failed"] == ["dp"]
    box = json.loads(Path(outcome["box"]).read_text())
    failure = box["measured"][0]["failure"]
    assert "instance 1 exited with code 1 before it was ready" in failure
    assert "vLLM says: To serve at least one request" in failure
    # tp (one instance on the base port) was measured after dp's instances were stopped.
    assert box["measured"][1]["failure"] is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| tp | 1 | 4 / 0 |" in report
    assert "| dp |" in report and "failed: dp" not in report and "failed: instance 1 exited" in report
    assert_all_gone(started(records))


def test_the_start_deadline_is_honoured(tmp_path, fake_python, records):
    opts = options(tmp_path, fake_python, records, mode="never_ready", start_timeout=2, stop_grace=2)
    began = time.monotonic()
    outcome = box_measure.run(opts, log=lambda _text: None)
    assert time.monotonic() - began < 2 + 2 + 5
    assert outcome["failed"] == ["dp"] and "no topology was measured" in outcome["error"]
    box = json.loads(Path(outcome["box"]).read_text())
    assert "did not answer a token within 2s (--start-timeout)" in box["measured"][0]["failure"]
    assert not (tmp_path / "out" / "report.md").exists()
    assert_all_gone(started(records))


def test_a_child_that_ignores_sigterm_is_killed_with_its_group(tmp_path, fake_python, records):
    opts = options(tmp_path, fake_python, records, mode="stubborn_child", stop_grace=1, concurrency=[1], requests=2, warmup=0)
    outcome = box_measure.run(opts, log=lambda _text: None)
    box = json.loads(Path(outcome["box"]).read_text())
    assert [e["stopped"] for e in box["measured"][0]["instances"]] == ["killed after 1s", "killed after 1s"]
    assert_all_gone(started(records))


def test_one_card_measures_what_the_planner_assesses(tmp_path, fake_python, records):
    opts = options(tmp_path, fake_python, records, facts=str(H100X1), topologies=["dp", "tp", "vllm_dp"], concurrency=[1], requests=2)
    outcome = box_measure.run(opts, log=lambda _text: None)
    assert outcome["failed"] == []
    assert len(started(records)) == 1
    assert "needs 2 or more" in outcome["topologies"]["tp"]["refused"]
    assert "needs 2 or more" in outcome["topologies"]["vllm_dp"]["refused"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "`tp`: not measured, the planner refuses it" in report
    assert_all_gone(started(records))


def test_ctrl_c_stops_every_instance(tmp_path, fake_python, records, capsys):
    opts = options(tmp_path, fake_python, records)

    def interrupted(_port, _model, _timeout):
        # Once both instances run (they have written what they were started with), as if Ctrl-C were pressed.
        deadline = time.time() + 10
        while len(started(records)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    argv = ["--model", opts["model"], "--out", opts["out"], "--facts", opts["facts"], "--python", fake_python, "--topologies", "dp"]
    argv += ["--base-port", str(opts["base_port"]), "--poll-interval", "0.1", "--stop-grace", "3"]
    argv += ["--set", opts["set"][1]]
    assert box_measure.main(argv, ready=interrupted) == 130
    assert "interrupted" in capsys.readouterr().err
    seen = started(records)
    assert len(seen) == 2
    assert_all_gone(seen)


def test_extra_arguments_for_the_lent_h200s_pass_through_the_launch():
    # What the lent H200s need besides the launch's own multicast-off settings
    # (plan_allreduce_multicast false, the default, adds those to tensor parallel).
    variables = {
        "plan_max_model_len": 8192,
        "plan_extra_args": ["--load-format", "dummy"],
        "plan_extra_env": {"VLLM_USE_FLASHINFER_SAMPLER": "0"},
    }
    kwargs, launch = box_measure.planner_inputs(variables, str(LLAMA))
    facts = box_measure.read_facts(str(H200X2))
    (tp,) = box_measure.plan_candidates(["tp"], facts, str(LLAMA), kwargs, launch)
    instance = tp["plan"]["instances"][0]
    assert instance["argv"][instance["argv"].index("--load-format") + 1] == "dummy"
    compilation = instance["argv"][instance["argv"].index("--compilation-config") + 1]
    assert json.loads(compilation) == {"pass_config": {"fuse_allreduce_rms": False}}
    assert instance["env"]["VLLM_FLASHINFER_ALLREDUCE_BACKEND"] == "trtllm"
    assert instance["env"]["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


def test_process_env_drops_what_the_launch_owns():
    instance = {"env": {"CUDA_VISIBLE_DEVICES": "1", "VLLM_NO_USAGE_STATS": "1"}}
    base = {"PATH": "/usr/bin", "CC": "/opt/gcc/bin/gcc", "CUDA_VISIBLE_DEVICES": "0,1", "VLLM_LOGGING_LEVEL": "DEBUG", "NCCL_DEBUG": "INFO"}
    env = box_measure.process_env(base, instance, "/tmp/c")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CC"] == "/opt/gcc/bin/gcc" and env["PATH"] == "/usr/bin"
    assert "VLLM_LOGGING_LEVEL" not in env and "NCCL_DEBUG" not in env
    assert env["TRITON_CACHE_DIR"] == "/tmp/c/triton"


@pytest.mark.parametrize(
    "case",
    [
        (["--concurrency", "0"], "--concurrency must be a whole number from 1"),
        (["--concurrency", "1,x"], "--concurrency must be whole numbers"),
        (["--topologies", "dp,pp"], "--topologies must list one or more of dp, tp, vllm_dp"),
        (["--set", "plan_nonsense=1"], "plan_nonsense is not a plan variable this tool takes"),
        (["--set", "plan_host=0.0.0.0"], "plan_host is not a setting of this tool"),
        (["--set", "plan_max_model_len"], "--set takes NAME=VALUE"),
        (["--set", 'plan_extra_args=["--max-model-len", "4096"]'], "plan_extra_args holds --max-model-len"),
        (["--set", "plan_max_model_len=999999"], "plan_max_model_len: 999999 is longer than the model's"),
        (["--set", "plan_gpu_memory_utilization=1.5"], "plan_gpu_memory_utilization: must be a fraction"),
        (["--base-port", "80"], "--base-port must be a whole number from 1024 to 65535"),
        (["--prompt-words", "0"], "--prompt-words must be a whole number from 1"),
        (["--start-timeout", "0"], "--start-timeout must be a whole number from 1"),
        (["--facts", "/nonexistent.json"], "--facts: /nonexistent.json is not a file"),
        (["--python", "python3"], "--python must be the absolute path"),
        (["--host", "a b"], "--host must be 1-63 letters"),
    ],
)
def test_bad_input_is_named_before_anything_starts(tmp_path, fake_python, records, capsys, case):
    change, words = case
    argv = ["--model", str(LLAMA), "--out", str(tmp_path / "out"), "--facts", str(H200X2), "--python", fake_python, *change]
    assert box_measure.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert started(records) == {}


def test_a_folder_without_config_json_and_a_port_in_use_are_refused(tmp_path, fake_python, capsys):
    assert box_measure.main(["--model", str(tmp_path), "--out", str(tmp_path / "out"), "--facts", str(H200X2), "--python", fake_python]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        argv = ["--model", str(LLAMA), "--out", str(tmp_path / "out"), "--facts", str(H200X2), "--python", fake_python, "--base-port", str(port)]
        assert box_measure.main([*argv, "--set", "plan_max_model_len=8192"]) == 2
    assert "port %d (instance 0 of dp) is in use" % port in capsys.readouterr().err


def test_facts_files_of_either_kind_and_none(tmp_path):
    from_snapshot = box_measure.read_facts(str(H200X2))
    assert from_snapshot["count"] == 2
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"nvidia_gpus": from_snapshot}))
    assert box_measure.read_facts(str(facts))["gpus"] == from_snapshot["gpus"]
    facts.write_text(json.dumps({"available": False, "reason": "NVML found no NVIDIA cards", "gpus": []}))
    with pytest.raises(box_measure.MeasureError, match="no cards to plan for: NVML found no NVIDIA cards; give --facts"):
        box_measure.read_facts(str(facts))
    facts.write_text("[1]")
    with pytest.raises(box_measure.MeasureError, match="neither nvidia_gpus facts"):
        box_measure.read_facts(str(facts))


def test_settings_file_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"plan_max_model_len": 4096, "plan_extra_args": ["--load-format", "dummy"]}))
    variables = box_measure.load_settings_file(str(path))
    kwargs, launch = box_measure.planner_inputs(variables, "/m", base_port=8101)
    assert kwargs == {"max_model_len": 4096, "base_port": 8101}
    assert launch["extra_args"] == ["--load-format", "dummy"] and launch["model_path"] == "/m"
    path.write_text("[]")
    with pytest.raises(box_measure.MeasureError, match="must hold a mapping"):
        box_measure.load_settings_file(str(path))
    with pytest.raises(box_measure.MeasureError, match="disagree"):
        box_measure.planner_inputs({"plan_base_port": 9000}, "/m", base_port=8101)


def test_tpot_comes_from_latency_and_token_count():
    record = {"outcome": "ok", "ttft": 0.1, "latency": 1.1, "tokens": 11}
    assert box_measure.tpot_from_latency(record) == pytest.approx(0.1)
    assert box_measure.tpot_from_latency(dict(record, tokens=1)) is None
    assert box_measure.tpot_from_latency(dict(record, outcome="timeout")) is None


def test_the_tool_runs_without_ansible_or_any_installed_package(tmp_path):
    """tools/measure_box.py under ``python -S`` (no site-packages: no Ansible, no matplotlib) imports and parses its options."""
    result = subprocess.run(
        [sys.executable, "-S", str(ROOT / "tools" / "measure_box.py"), "--help"], capture_output=True, text=True, timeout=60, check=False, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "--concurrency" in result.stdout
    probe = subprocess.run([sys.executable, "-S", "-c", "import ansible"], capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode != 0, "ansible is importable without site-packages: the check above proves nothing"


def test_an_unexpected_failure_is_a_message_not_a_traceback(tmp_path, fake_python, capsys):
    def broken_popen(*_args, **_kwargs):
        raise RuntimeError("no processes today")

    argv = ["--model", str(LLAMA), "--out", str(tmp_path / "out"), "--facts", str(H200X2), "--python", fake_python]
    argv += ["--base-port", str(free_port_pair()), "--set", "plan_max_model_len=8192", "--topologies", "dp"]
    assert box_measure.main(argv, popen=broken_popen) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: no processes today" in err and "Traceback" not in err
