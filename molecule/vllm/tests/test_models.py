"""Two models, one address: the fleet gateway (t-vllm-cache) routes each request by the model it names.

t-vllm1 serves `tiny` (two instances); `tiny-b` is served by the group of t-vllm2 (its leader, the
one that takes requests) and t-vllm3, and by t-vllm4 alone: gpufleet_models in molecule.yml. The client is the official `openai` package, the one vLLM's own
virtualenv holds, run on t-vllm1 against the gateway's address; the server
tiers' access logs say which GPU server each request reached.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils import cache_router

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = Path(__file__).resolve().parents[1]
GATEWAY = "t-vllm-cache"
URL = "http://%s/v1" % GATEWAY
KEY = "vllm-scenario-key-0123456789"
# The GPU servers that take each model's requests (a group's follower takes none).
SERVERS = {"tiny": ["t-vllm1"], "tiny-b": ["t-vllm2", "t-vllm4"]}
ACCESS_LOG = "/var/log/nginx/gpufleet-access.log"
CLIENT = "t-vllm1"

# Runs in vLLM's virtualenv on CLIENT; prints one JSON object.
OPENAI_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import openai

    asks = json.loads(sys.argv[1])
    client = openai.OpenAI(base_url=%r, api_key=%r, max_retries=0, timeout=120)
    out = {"answers": [], "errors": []}
    for ask in asks:
        try:
            if ask["kind"] == "models":
                out["models"] = sorted(m.id for m in client.models.list().data)
            elif ask["kind"] == "chat" and ask["stream"]:
                chunks = list(client.chat.completions.create(
                    model=ask["model"], messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                out["answers"].append({"ask": ask, "model": chunks[0].model, "chunks": len(chunks), "text": text})
            elif ask["kind"] == "chat":
                reply = client.chat.completions.create(
                    model=ask["model"], messages=[{"role": "user", "content": "hello"}], max_tokens=8)
                out["answers"].append({"ask": ask, "model": reply.model, "tokens": reply.usage.completion_tokens})
            else:
                reply = client.completions.create(model=ask["model"], prompt=ask.get("prompt", "hello fleet"), max_tokens=8)
                out["answers"].append({"ask": ask, "model": reply.model, "tokens": reply.usage.completion_tokens})
        except openai.APIStatusError as exc:
            out["errors"].append({"ask": ask, "status": exc.status_code, "body": exc.body})
    print(json.dumps(out))
    """
) % (URL, KEY)


# A request of a client in a server tier's access log: to the server tier's API, or through the route to one
# instance that vLLM's router takes (not the router's render requests).
API_LINE = re.compile(r'"POST (/_gpufleet/instance/(?P<instance>[^/ ]+))?/v1/(chat/)?completions HTTP')
ROUTER_UNIT = "gpufleet-router-1"


def ask_openai(asks):
    run = subprocess.run(
        ["podman", "exec", "-i", CLIENT, "/opt/vllm/venv/bin/python", "-", json.dumps(asks)],
        input=OPENAI_SCRIPT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def log_lines(container):
    host = testinfra.get_host("podman://" + container)
    return host.file(ACCESS_LOG).content_string.splitlines()


def curl(*args):
    """curl on the gateway itself (its loopback may ask /health); returns (status, JSON body)."""
    host = testinfra.get_host("podman://" + GATEWAY)
    out = host.run("curl -sS --max-time 60 -o /tmp/body -w '%%{http_code}' " + " ".join(["%s"] * len(args)) + " && echo && cat /tmp/body", *args)
    assert out.rc == 0, out.stderr
    status, body = out.stdout.split("\n", 1)
    return int(status), json.loads(body) if body.strip() else None


def test_each_model_answers_through_one_address_and_reaches_only_its_servers():
    asks = []
    for model in SERVERS:
        asks += [{"kind": "chat", "model": model, "stream": False}, {"kind": "chat", "model": model, "stream": True}]
        asks += [{"kind": "completion", "model": model}, {"kind": "chat", "model": model, "stream": False}]
    asks += [{"kind": "chat", "model": "tiny", "stream": True}] * 2
    before = {name: len(log_lines(name)) for servers in SERVERS.values() for name in servers}
    found = ask_openai(asks)
    assert found["errors"] == []
    assert [a["model"] for a in found["answers"]] == [a["model"] for a in asks], "an answer came from another model"
    streamed = [a for a in found["answers"] if a["ask"].get("stream")]
    assert streamed and all(a["chunks"] >= 3 for a in streamed), streamed
    # The server tiers' access logs: every request for a model reached a server of that model, and only those
    # (tiny's through vLLM's router, by the route to one instance, besides the router's render requests).
    for model, servers in SERVERS.items():
        new = [line for server in servers for line in log_lines(server)[before[server] :] if API_LINE.search(line)]
        wanted = sum(1 for a in asks if a["model"] == model)
        assert len(new) == wanted, "%s logged %d requests, %d were for their model %s:\n%s" % (servers, len(new), wanted, model, "\n".join(new))
        assert all(" 200 " in line for line in new), new


def test_v1_models_lists_every_model():
    assert ask_openai([{"kind": "models"}])["models"] == ["tiny", "tiny-b"]


def test_an_unknown_model_gets_an_openai_404_naming_the_served_ones():
    (error,) = ask_openai([{"kind": "chat", "model": "gpt-nope", "stream": False}])["errors"]
    assert error["status"] == 404
    assert error["body"]["code"] == "model_not_found" and error["body"]["param"] == "model"
    assert error["body"]["message"] == "The model `gpt-nope` does not exist; this gateway serves: tiny, tiny-b"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ('{"prompt": "x"}', 400, 'name the model in the request ("model"); this gateway serves: tiny, tiny-b'),
        ('{"model": 7}', 400, "name the model"),
        ("not json", 400, "the request body is not JSON"),
    ],
)
def test_a_request_without_a_model_gets_a_400(body, status, words):
    got, answer = curl("-H", "Authorization: Bearer " + KEY, "-H", "content-type: application/json", "-d", body, "http://127.0.0.1/v1/completions")
    assert got == status and words in answer["error"]["message"], answer


def test_keys_apply_to_every_model():
    for model in SERVERS:
        got, answer = curl("-H", "content-type: application/json", "-d", json.dumps({"model": model, "prompt": "x"}), "http://127.0.0.1/v1/completions")
        assert got == 401 and answer["error"]["type"] == "authentication_error"


def test_health_names_each_model():
    assert curl("http://127.0.0.1/health") == (200, {"status": "ok", "models": {"tiny": "ok", "tiny-b": "ok"}})


def test_a_server_added_to_a_models_group_joins_that_pool_only(tmp_path):
    """add_servers.yml rewrites each gateway over every server of gpu_servers: a new server of model_tiny_b's
    group lands in tiny-b's upstream and nowhere else (the gateway role in check mode, with the server added by
    a second inventory; nothing changes on the gateway)."""
    extra = tmp_path / "added.yml"
    extra.write_text(
        "all:\n  children:\n    gpu_servers:\n      hosts:\n        t-vllm5: {gateway_address: 10.89.7.5}\n    model_tiny_b:\n      hosts:\n        t-vllm5:\n"
    )
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH="%s/collections:%s/.cache/collections" % (ROOT, ROOT),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    args = ["ansible-playbook", "-i", inventory, "-i", str(extra), "--limit", GATEWAY, "--check", "--diff", str(SCENARIO / "gateway.yml")]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False, cwd=str(SCENARIO))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    added = [i for i, line in enumerate(lines) if line.startswith("+") and "server 10.89.7.5:" in line]
    assert len(added) == 1 and lines[added[0]].endswith("# t-vllm5 (10.89.7.5)"), run.stdout[-4000:]
    # Nothing else is added: not the group's follower t-vllm3 either, whose plan the run (limited to the gateway)
    # reads from the server (roles/gateway/tasks/inputs.yml).
    assert [line for line in lines if line.startswith("+") and "server " in line] == [lines[added[0]]], run.stdout[-4000:]
    assert not [line for line in lines if line.startswith("-") and "server " in line]
    # In the upstream of tiny-b: the diff's context above the new line, back to the block's opening (or the hunk's
    # start), names tiny-b's servers and no other.
    above, opening = [], ""
    for line in reversed(lines[: added[0]]):
        if line.startswith("@@") or "{" in line:
            opening = line
            break
        above.append(line)
    assert sorted(re.findall(r"# (t-vllm\d)", "\n".join(above))) == SERVERS["tiny-b"], above
    assert opening.startswith("@@") or opening.strip() == "upstream gpufleet_fleet_2 {", opening
    conf = testinfra.get_host("podman://" + GATEWAY).file("/etc/nginx/conf.d/gpufleet.conf").content_string
    assert '"tiny-b" gpufleet_fleet_2;' in conf and "10.89.7.5" not in conf


def test_a_model_without_a_server_in_service_leaves_the_other_serving():
    """The server tiers of tiny-b's servers stopped: tiny-b is unavailable (a JSON 5xx, /health 503 naming it),
    tiny serves, and /v1/models lists what answers."""
    servers = [testinfra.get_host("podman://" + name) for name in SERVERS["tiny-b"]]
    try:
        for server in servers:
            assert server.run("systemctl stop nginx").rc == 0
        assert curl("http://127.0.0.1/health") == (503, {"status": "unavailable", "models": {"tiny": "ok", "tiny-b": "unavailable"}})
        found = ask_openai([{"kind": "models"}, {"kind": "completion", "model": "tiny-b"}, {"kind": "completion", "model": "tiny"}])
        assert found["models"] == ["tiny"]
        assert [a["model"] for a in found["answers"]] == ["tiny"]
        (error,) = found["errors"]
        assert error["status"] in (502, 503) and error["body"]["type"] == "server_error", error
    finally:
        for server in servers:
            assert server.run("systemctl start nginx").rc == 0
    # The fleet tier took both servers out for their fail_timeout (10 s: max_fails=2 reached while they were
    # down); it serves tiny-b again once that has passed.
    deadline = time.time() + 30
    while curl("http://127.0.0.1/health")[0] != 200:
        assert time.time() < deadline, "tiny-b did not come back within 30 s of its servers' nginx starting"
        time.sleep(1)


def test_the_cache_aware_model_keeps_a_prefix_on_one_instance():
    """tiny (balance cache_aware) goes through vLLM's router on the gateway: requests that share a long prefix
    reach one instance of t-vllm1, by the server tier's route to that instance; tiny-b's never take a route."""
    words = " ".join(["the fleet shares this long system prompt"] * 12)
    asks = [{"kind": "completion", "model": "tiny", "prompt": "%s %s question %d" % (p, words, i)} for p in ("alpha", "omega") for i in range(3)]
    (server,) = SERVERS["tiny"]
    before = len(log_lines(server))
    found = ask_openai(asks)
    assert found["errors"] == [] and len(found["answers"]) == len(asks)
    reached = [API_LINE.search(line).group("instance") for line in log_lines(server)[before:] if API_LINE.search(line)]
    assert len(reached) == len(asks) and None not in reached, reached
    assert len(set(reached[:3])) == 1 and len(set(reached[3:])) == 1, reached
    for other in SERVERS["tiny-b"]:
        assert not [line for line in log_lines(other) if "/_gpufleet/instance/" in line and "/health" not in line], other


def test_the_router_runs_its_launch_alone_on_loopback():
    """The router's unit runs the site model's entry through cache_router.router_exec_start, as a hardened
    service of its own, listening on loopback only."""
    host = testinfra.get_host("podman://" + GATEWAY)
    assert host.service(ROUTER_UNIT).is_running and host.service(ROUTER_UNIT).is_enabled
    model = json.loads(host.file("/etc/nginx/gpufleet/site.json").content_string)
    (router,) = model["fleet"]["cache_routers"]
    assert router["model"] == "tiny" and len(router["workers"]) == 2
    unit = host.file("/etc/systemd/system/%s.service" % ROUTER_UNIT).content_string
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    assert line == "ExecStart=" + cache_router.router_exec_start("/opt/gpufleet-router/venv/bin/vllm-router", router)
    listening = host.run("ss -Hltn").stdout
    mine = [x.split()[3] for x in listening.splitlines() if x.split()[3].rsplit(":", 1)[1] in ("8199", "8200", "8201")]
    # The router and its metrics, and nginx's route to its workers: loopback only.
    assert sorted(mine) == ["127.0.0.1:8199", "127.0.0.1:8200", "127.0.0.1:8201"], listening
    exposure = host.run("systemd-analyze security %s --no-pager" % ROUTER_UNIT).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", exposure).group(1))
    assert score <= 3.0, exposure[-2000:]
