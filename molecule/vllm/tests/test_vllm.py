"""The vllm role on a real host: real vLLM (CPU build) under systemd.

The same tests run on t-vllm1 (`dp`, two instances) and t-vllm2 (`pp`, the
leader of a group of two servers, tests/test_group.py); they read the plan
each host realises from /etc/vllm/plan.json. `tp` runs in the site scenario.
"""

import json

import pytest

testinfra_hosts = ["podman://t-vllm1", "podman://t-vllm2"]
# Each host serves its own model (gpufleet_models): t-vllm1 `tiny`, t-vllm2 `tiny-b`.
MODELS = {"t-vllm1": "tiny", "t-vllm2": "tiny-b"}


def served(plan):
    """The name the plan's instances serve."""
    return plan["launch"]["served_model_name"]


@pytest.fixture(scope="module")
def plan(host):
    return json.loads(host.file("/etc/vllm/plan.json").content_string)


# The instances' key (the vllm role makes it, root-only): vLLM answers /v1 to its holder alone.
KEY_HEADER = "-H \"Authorization: Bearer $(sed -n 's/^VLLM_API_KEY=//p' /etc/vllm/instance-api-key)\""


def post(host, port, path, body, stream=False):
    cmd = "curl -sS -N --max-time 60 " + KEY_HEADER + " -H 'content-type: application/json' -d %s http://127.0.0.1:%s%s"
    out = host.run(cmd, json.dumps(body), str(port), path)
    assert out.rc == 0, out.stderr
    return out.stdout if stream else json.loads(out.stdout)


def test_plan_shape(host, plan):
    assert plan["topology"] == {"t-vllm1": "dp", "t-vllm2": "pp"}[host.backend.get_hostname()]
    assert served(plan) == MODELS[host.backend.get_hostname()]
    assert plan["launch"]["model_path"] == "/var/lib/vllm/models/" + served(plan)
    if plan["topology"] == "dp":
        assert [i["gpus"] for i in plan["instances"]] == [[0], [1]]
        assert [i["port"] for i in plan["instances"]] == [8001, 8002]
    else:
        assert plan["topology"] == "pp"
        assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (1, 2)
        assert [i["gpus"] for i in plan["instances"]] == [[0]]


def test_units_active_and_enabled(host, plan):
    for inst in plan["instances"]:
        svc = host.service("vllm@%s" % inst["name"])
        assert svc.is_running and svc.is_enabled, inst["name"]


def test_environment_files(host, plan):
    for inst in plan["instances"]:
        env = host.file("/etc/vllm/%s.env" % inst["name"])
        assert env.mode == 0o640 and env.group == "vllm"
        text = env.content_string
        # The plan's environment, as it is.
        for key, value in inst["env"].items():
            assert "%s=%s\n" % (key, value) in text, key
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in text
        assert "HF_HUB_OFFLINE=1" in text
        assert "VLLM_CPU_OMP_THREADS_BIND=%s" % "|".join(str(g) for g in inst["gpus"]) in text
        assert "GPUFLEET_LAUNCH_SHA1=%s\n" % inst["launch_sha1"] in text


def test_each_instance_runs_exactly_the_plans_argument_vector(host, plan):
    """The plan is the launch: the running API server's command line is the plan's argv, word for word."""
    for inst in plan["instances"]:
        dropin = host.file("/etc/systemd/system/vllm@%s.service.d/gpufleet-launch.conf" % inst["name"])
        assert dropin.exists and dropin.mode == 0o644
        pid = host.run("systemctl show -P MainPID vllm@%s.service", inst["name"]).stdout.strip()
        if inst.get("guard_argv"):
            # A group member: the unit's main process is the group guard (tests/test_group.py), vLLM its child.
            pid = host.run("pgrep -P %s", pid).stdout.strip()
        cmdline = host.run("tr '\\0' '\\n' < /proc/%s/cmdline", pid).stdout.splitlines()
        assert cmdline[1:3] == ["-m", "vllm.entrypoints.openai.api_server"], cmdline
        assert cmdline[3:] == inst["argv"], (cmdline, inst["argv"])
        assert cmdline[cmdline.index("--port") + 1] == str(inst["port"])
        if plan["topology"] == "pp":
            assert cmdline[cmdline.index("--pipeline-parallel-size") + 1] == "2"


def test_vllm_reports_the_kv_cache_the_plan_predicts(host, plan):
    """vLLM's own start-up report, recorded by the role beside the plan: within 5% on `dp` and `tp`."""
    check = plan["check"]
    assert check["failures"] == [], check
    assert len(check["instances"]) == len(plan["instances"])
    for entry in check["instances"]:
        print("%s vllm@%s: planned %s KV tokens, vLLM reports %s (%s)" % (host.backend.get_hostname(), entry["name"],
              entry["predicted_kv_tokens"], entry["reported_kv_tokens"], entry["source"]))  # fmt: skip
        assert entry["reported_kv_tokens"] and entry["predicted_kv_tokens"], entry
        assert abs(entry["reported_kv_tokens"] / entry["predicted_kv_tokens"] - 1) <= 0.05, entry


def test_listens_only_on_loopback(host, plan):
    """vLLM listens on loopback only; the one port open beyond it is the server tier's nginx (port 8000), and, on a
    group's member, what vLLM's multi-node launch opens on the member's own address (the units let only the
    group's members reach it: tests/test_group.py)."""
    group = plan.get("group") or {}
    own = [m["address"] + ":" for m in group.get("members", []) if m["host"] == host.backend.get_hostname()]
    if group.get("node_rank") == 0:
        own.append("*:%d" % group["master_port"])  # vLLM's TCP store listens on every address; the unit admits only members
    listening = host.run("ss -Hltnp").stdout.split("\n")
    sockets = [(line.split()[3], line) for line in listening if line.strip()]
    assert sockets, "nothing listens"
    for addr, line in sockets:
        assert addr.startswith(("127.0.0.1:", "[::1]:", *own)) or (addr in ("0.0.0.0:8000", "*:8000") and '"nginx"' in line), line
    for inst in plan["instances"]:
        assert host.socket("tcp://127.0.0.1:%s" % inst["port"]).is_listening


def test_nothing_left_of_other_topologies(host, plan):
    names = {i["name"] for i in plan["instances"]}
    units = host.run("systemctl list-units --all --plain --no-legend 'vllm@*'").stdout.split("\n")
    running = {u.split()[0][len("vllm@") : -len(".service")] for u in units if u.strip()}
    assert running == names
    envs = host.run("ls /etc/vllm").stdout.split()
    assert sorted(e[:-4] for e in envs if e.endswith(".env")) == sorted(names)
    enabled = host.run("ls /etc/systemd/system/multi-user.target.wants/").stdout.split()
    assert sorted(e for e in enabled if e.startswith("vllm@")) == sorted("vllm@%s.service" % n for n in names)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_on_every_instance(host, plan, stream):
    for inst in plan["instances"]:
        body = {"model": served(plan), "prompt": "hello fleet", "max_tokens": 8, "stream": stream}
        out = post(host, inst["port"], "/v1/completions", body, stream=stream)
        if stream:
            events = [e for e in out.split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert len(events) >= 3, out
        else:
            assert out["usage"]["completion_tokens"] >= 1
            assert out["choices"][0]["finish_reason"] in ("length", "stop")


def test_chat_completions_on_every_instance(host, plan):
    for inst in plan["instances"]:
        body = {"model": served(plan), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        out = post(host, inst["port"], "/v1/chat/completions", body)
        assert out["choices"][0]["message"]["role"] == "assistant"


def test_unit_properties(host, plan):
    props = host.service("vllm@%s" % plan["instances"][0]["name"]).systemd_properties
    assert props["KillMode"] == "control-group"
    assert props["Restart"] == "always"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["User"] == "vllm"
    assert int(props["StartLimitBurst"]) >= 1


def test_v1_needs_the_hosts_instance_key(host, plan):
    key = host.file("/etc/vllm/instance-api-key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert key.content_string.startswith("VLLM_API_KEY=")
    body = json.dumps({"model": served(plan), "prompt": "ping", "max_tokens": 1})
    for inst in plan["instances"]:
        port = str(inst["port"])
        for header in ("", "-H 'Authorization: Bearer wrong-key-0123456789'"):
            out = host.run("curl -s -o /dev/null -w '%%{http_code}' " + header + " -H 'content-type: application/json' "
                           "-d %s http://127.0.0.1:%s/v1/completions", body, port)  # fmt: skip
            assert out.stdout == "401", (port, header, out.stdout)
        # Any local user other than root cannot read the key, so gets nowhere either.
        out = host.run("runuser -u nobody -- curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%s/v1/models", port)
        assert out.stdout == "401", out.stdout
        assert host.run("curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%s/health", port).stdout == "200"


def test_kernel_refuses_other_addresses_to_the_units(host, plan):
    props = host.service("vllm@%s" % plan["instances"][0]["name"]).systemd_properties
    assert sorted(props["IPAddressDeny"].split()) == ["0.0.0.0/0", "::/0"], props["IPAddressDeny"]  # systemd prints them in any order
    assert "127.0.0.0/8" in props["IPAddressAllow"].split(), props["IPAddressAllow"]
    # What those two properties do on this host: the cache answers a plain
    # process, and not one that runs under them.
    url = "http://t-vllm-cache:8080/"
    assert host.run("curl -s -o /dev/null -m 10 %s", url).rc == 0
    fenced = host.run("systemd-run --wait --quiet --pipe -p IPAddressDeny=any -p IPAddressAllow=localhost curl -s -o /dev/null -m 10 %s", url)
    assert fenced.rc != 0, fenced


def test_security_exposure_at_most_3(host, plan):
    unit = "vllm@%s.service" % plan["instances"][0]["name"]
    out = host.run("systemd-analyze security --no-pager %s", unit)
    last = next(line for line in out.stdout.split("\n") if "Overall exposure level" in line)
    score = float(last.split(":")[1].split()[0])
    print("systemd-analyze security %s: %s" % (unit, score))
    assert score <= 3.0, last
