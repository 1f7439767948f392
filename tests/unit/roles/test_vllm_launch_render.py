"""The units the vllm role renders run exactly what the plan computed with.

For the demo, example and molecule inventories: the plan role's module call
(roles/plan/tasks/plan.yml, its arguments rendered with Ansible's Templar from
the inventory's variables) makes the plan; the vllm role's drop-in and
environment templates are rendered from it; the ExecStart= line is split as
systemd splits it and the environment file read as systemd reads it; each
instance's arguments and environment are then compared with the plan's own
figures, field by field (the acceptance test of "one plan, one launch").
The roles also keep no second name for a planned setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.plugins.filter import systemd_exec_start
from ansible_collections.gpufleet.serving.plugins.module_utils import fleet_models, nvml_facts, server_groups, vllm_instances, vllm_launch, vllm_planner
from ansible_collections.gpufleet.serving.plugins.modules import vllm_plan as vllm_plan_module
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import load_trusted, trust_as_template

ROOT = Path(__file__).resolve().parents[3]
LOADER = DataLoader()


SNAPSHOT = ROOT / "tests" / "fixtures" / "nvml" / "h200x2-nvlink.nvml.json"
OMIT = "__omit_place_holder__gpufleet"
# The tiny model of tests/model/make_tiny_model.py (config.json only: the planner reads nothing else).
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 444,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def yaml_file(rel):
    return yaml.safe_load((ROOT / rel).read_text()) or {}


def molecule_vars(scenario, host):
    inventory = yaml_file("molecule/%s/molecule.yml" % scenario)["provisioner"]["inventory"]
    if "links" in inventory:  # the site scenario links the demo inventory's group_vars
        variables = dict(yaml_file("inventory/demo/group_vars/gpu_servers.yml"))
        # A host's variables are a file, or a folder of files read in name order (as Ansible reads them).
        single = ROOT / "molecule" / scenario / "host_vars" / ("%s.yml" % host)
        files = [single] if single.exists() else sorted((ROOT / "molecule" / scenario / "host_vars" / host).glob("*.yml"))
        assert files, "no host_vars for %s in molecule/%s" % (host, scenario)
        for path in files:
            variables.update(yaml_file(str(path.relative_to(ROOT))))
        return variables
    variables = dict(inventory["group_vars"]["gpu_servers"])
    # The host's model's group (gpufleet_models), as the plan role places it: its variables and its name.
    groups = {}
    for platform in yaml_file("molecule/%s/molecule.yml" % scenario)["platforms"]:
        for group in platform.get("groups", []):
            groups.setdefault(group, []).append(platform["name"])
    models = inventory["group_vars"].get("all", {}).get("gpufleet_models", [])
    model_groups = {model["group"] for model in models}
    # The host's other groups (a server group's, for one), in name order as Ansible reads them.
    for group in sorted(g for g, hosts in groups.items() if host in hosts and g != "gpu_servers" and g not in model_groups):
        variables.update(inventory["group_vars"].get(group) or {})
    if variables.get("gpufleet_server_group"):
        variables["_test_host"] = host
        variables["_test_group_hosts"] = list(groups[next(g for g, hosts in groups.items() if host in hosts and g.startswith("group_"))])
    for model in models:
        if host in groups.get(model["group"], []):
            variables.update(inventory["group_vars"][model["group"]])
    variables["_plan_model_name"] = fleet_models.model_name(host, models, groups)
    variables["_plan_model_balance"] = fleet_models.model_balance(host, models, groups)
    variables.update(inventory.get("host_vars", {}).get(host) or {})
    return variables


INVENTORIES = {
    "demo/gpu1": lambda: {**yaml_file("inventory/demo/group_vars/gpu_servers.yml"), **yaml_file("inventory/demo/host_vars/gpu1.yml")},
    "demo/gpu2": lambda: {**yaml_file("inventory/demo/group_vars/gpu_servers.yml"), **yaml_file("inventory/demo/host_vars/gpu2.yml")},
    "example/gpu": lambda: yaml_file("inventory/example/group_vars/gpu_servers.yml"),
    "molecule-vllm/t-vllm1": lambda: molecule_vars("vllm", "t-vllm1"),
    "molecule-vllm/t-vllm2": lambda: molecule_vars("vllm", "t-vllm2"),
    "molecule-vllm/t-vllm3": lambda: molecule_vars("vllm", "t-vllm3"),
    "molecule-vllm/t-vllm4": lambda: molecule_vars("vllm", "t-vllm4"),
    "molecule-site/t-site-gpu1": lambda: molecule_vars("site", "t-site-gpu1"),
    "molecule-site/t-site-gpu2": lambda: molecule_vars("site", "t-site-gpu2"),
}


def template(text, variables):
    return Templar(loader=LOADER, variables=variables).template(trust_as_template(text))


def plan_for(inventory, tmp_path):
    """The plan the plan role makes for these inventory variables (cards: the scenario's capture, else the two-H200 one)."""
    tiny = tmp_path / "tiny-model"
    tiny.mkdir(exist_ok=True)
    (tiny / "config.json").write_text(json.dumps(TINY))
    variables = dict(yaml_file("roles/plan/defaults/main.yml"))
    variables.update(inventory)
    # Control-node paths of the inventories, pointed at what this test has.
    if "{{ inventory_dir }}/models/" in str(variables["plan_model_config"]):  # the example inventory's own model files
        variables["plan_model_config"] = str(ROOT / "inventory" / "example" / "models" / "llama-3.1-8b-instruct")
    else:
        variables["plan_model_config"] = str(tiny)
    # A molecule scenario's own capture (the group's, t-vllm4's one H100), else the two-H200 one.
    given = str(variables.get("plan_nvml_snapshot") or "")
    snapshot = Path(given.replace("${MOLECULE_PROJECT_DIRECTORY}", str(ROOT))) if "${MOLECULE_PROJECT_DIRECTORY}" in given else SNAPSHOT
    variables["plan_nvml_snapshot"] = str(snapshot)
    variables["plan_measured"] = ""
    facts = {"nvidia_gpus": nvml_facts.facts_from_raw(json.loads(snapshot.read_text()), "snapshot")}
    # roles/plan/vars/main.yml's _plan_group: the members as the facts of this run give them (addresses made up).
    if variables.get("_test_host"):
        hosts = variables["_test_group_hosts"]
        members = [(h, {**variables, "ansible_facts": {**facts, "eth0": {"ipv4": {"address": "10.89.9.%d" % (n + 2)}}}}) for n, h in enumerate(hosts)]
        variables["_plan_group"] = server_groups.group_input(variables["_test_host"], members, hosts)
    else:
        variables["_plan_group"] = {"group": None, "problems": []}
    variables.update(
        _plan_from_profile=False,
        _plan_from_snapshot=True,
        # roles/plan/vars/main.yml: the model's name of gpufleet_models, else plan_served_model_name.
        _plan_served_name=variables.get("_plan_model_name") or variables["plan_served_model_name"],
        _plan_model_balance=variables.get("_plan_model_balance", ""),
        omit=OMIT,
        ansible_facts=facts,
    )
    tasks = yaml_file("roles/plan/tasks/plan.yml")
    args = next(t["gpufleet.serving.vllm_plan"] for t in tasks if "gpufleet.serving.vllm_plan" in t)
    rendered = {}
    for key, raw in args.items():
        value = template(raw, variables) if isinstance(raw, str) else raw
        if isinstance(value, dict):
            value = {k: template(v, variables) if isinstance(v, str) else v for k, v in value.items()}
        if value != OMIT:
            rendered[key] = value
    # The module's own argument handling (types, defaults), then its call.
    spec_types = {"int": int, "float": float, "bool": lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1")}
    documented = yaml.safe_load(vllm_plan_module.DOCUMENTATION)["options"]
    for key, value in list(rendered.items()):
        kind = documented[key].get("type")
        if kind in spec_types and not isinstance(value, dict):
            rendered[key] = spec_types[kind](value)
    launch = {}
    for key, value in rendered.pop("launch").items():
        kind = documented["launch"]["suboptions"][key]["type"]
        launch[key] = spec_types[kind](value) if kind in spec_types else value
    prefix = rendered.pop("variable_prefix")
    return vllm_planner.plan(launch=launch, launch_prefix=prefix, **rendered)


def render_instance(plan, instance):
    """The drop-in's ExecStart= words and the environment file's variables, as systemd reads them."""
    role = ROOT / "roles" / "vllm"
    variables = dict(load_trusted(LOADER, str(role / "defaults" / "main.yml")))
    variables.update(
        vllm_plan=plan,
        item=instance,
        ansible_managed="Ansible managed",
        __vllm_unit={"checksum": "0123"},
    )
    variables.update(load_trusted(LOADER, str(role / "vars" / "main.yml")))
    templar = Templar(loader=LOADER, variables=variables)
    # The collection's filter, called as the template calls it (the test's Templar has no collection loader).
    text = (role / "templates" / "vllm-launch.conf.j2").read_text()
    call = "item | gpufleet.serving.systemd_exec_start(_vllm_python, _vllm_group_guard, _vllm_headless)"
    assert call in text
    variables["_systemd_exec_start"] = systemd_exec_start.systemd_exec_start
    templar = Templar(loader=LOADER, variables=variables)
    dropin = templar.template(trust_as_template(text.replace(call, "_systemd_exec_start(item, _vllm_python, _vllm_group_guard, _vllm_headless)")))
    env_text = templar.template(trust_as_template((role / "templates" / "vllm.env.j2").read_text()), overrides={"trim_blocks": True, "lstrip_blocks": True})
    lines = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert lines[0] == "ExecStart=", "the drop-in must reset the template's ExecStart="
    words = vllm_launch.systemd_split(lines[1][len("ExecStart=") :])
    if instance.get("guard_argv"):
        # A group member: the guard with the plan's options, then the member's own command.
        guard = variables["vllm_install_dir"] + "/gpufleet-group-guard.py"
        assert words[: 4 + len(instance["guard_argv"]) + 1] == [words[0], "-I", "-s", guard, *instance["guard_argv"], "--"]
        words = words[4 + len(instance["guard_argv"]) + 1 :]
        allow = [line for line in dropin.splitlines() if line.startswith("IPAddressAllow=")]
        assert allow == ["IPAddressAllow=" + " ".join(m["address"] for m in plan["group"]["members"])], allow
        if instance["role"] == "follower":
            assert words[1:4] == ["-I", "-s", variables["vllm_install_dir"] + "/vllm-headless.py"]
            words = [words[0], "-m", "vllm.entrypoints.openai.api_server", *words[4:]]  # compared as any instance below
    return words, vllm_instances.parse_env_file(env_text)


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_rendered_units_run_what_the_plan_computed(name, tmp_path):
    plan = plan_for(INVENTORIES[name](), tmp_path)
    rendered = []
    for instance in plan["instances"]:
        words, env = render_instance(plan, instance)
        python = yaml_file("roles/vllm/defaults/main.yml")["vllm_install_dir"] + "/venv/bin/python"
        assert words[:3] == [python, "-m", "vllm.entrypoints.openai.api_server"]
        argv = words[3:]
        assert argv == instance["argv"]
        assert env["GPUFLEET_LAUNCH_SHA1"] == instance["launch_sha1"]
        process_env = {k: v for k, v in env.items() if k not in vllm_launch.RESERVED_ENV or k == "GPUFLEET_PORT"}
        assert process_env == instance["env"]
        rendered.append(dict(instance, argv=argv, env=process_env))
    # Field by field: what the units say against the figures the table prints.
    assert vllm_launch.launch_mismatches(dict(plan, instances=rendered)) == []
    for instance in rendered:
        argv = instance["argv"]
        assert argv[argv.index("--max-model-len") + 1] == str(plan["max_model_len"])
        assert argv[argv.index("--max-num-seqs") + 1] == str(plan["max_num_seqs"])
        if plan["device"] == "cpu":
            # The plan's KV tokens are the CPU build's KV-cache space over the bytes of a token on each worker.
            per_token = vllm_planner.kv_bytes_per_token(dict(vllm_planner.describe_model(TINY), kv_bytes=4), plan["tensor_parallel_size"])
            if plan["topology"] == "pp":
                # Each worker holds the KV of its pipeline stage's layers only: the fullest stage counts.
                per_token = per_token * max(plan["memory"]["stage_layers"]) // TINY["num_hidden_layers"]
            assert "VLLM_CPU_KVCACHE_SPACE" not in instance["env"]
            assert plan["memory"]["kv_tokens_per_instance"] == int(argv[argv.index("--kv-cache-memory-bytes") + 1]) // per_token
            assert argv[argv.index("--dtype") + 1] == plan["dtype"] == "float32"
            assert "--gpu-memory-utilization" not in argv
        else:
            assert argv[argv.index("--gpu-memory-utilization") + 1] == str(plan["gpu_memory_utilization"])


def test_the_demo_serves_what_it_plans(tmp_path):
    """The demo planned bfloat16 and served float32 before: now one dtype, and both topologies."""
    gpu1 = plan_for(INVENTORIES["demo/gpu1"](), tmp_path)
    gpu2 = plan_for(INVENTORIES["demo/gpu2"](), tmp_path)
    assert (gpu1["topology"], gpu2["topology"]) == ("dp", "tp")
    assert gpu1["dtype"] == gpu2["dtype"] == "float32"
    assert gpu2["instances"][0]["argv"][gpu2["instances"][0]["argv"].index("--tensor-parallel-size") + 1] == "2"
    assert gpu1["instances"][0]["argv"][gpu1["instances"][0]["argv"].index("--served-model-name") + 1] == "tiny"


# Settings the plan computes with or writes into the launch: no role but the plan role may have a default for them.
PLANNED_SETTINGS = (
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "concurrency",
    "max_num_seqs",
    "device",
    "cpu_kvcache_space_gib",
    "cpu_bind_cores",
    "enforce_eager",
    "extra_args",
    "extra_env",
    "served_model_name",
    "model_path",
    "host",
    "shutdown_timeout_sec",
    "http_keepalive_sec",
    "tensor_parallel_size",
    "base_port",
    "topology",
    "allreduce_multicast",
)


# Same words, other meanings.
NOT_PLAN_SETTINGS = {"bakeoff_concurrency"}  # the load levels the bake-off drives, not the sequences a plan holds


@pytest.mark.parametrize("role", sorted(p.name for p in (ROOT / "roles").iterdir() if p.name != "plan"))
def test_no_role_default_duplicates_a_plan_setting(role):
    defaults = yaml_file("roles/%s/defaults/main.yml" % role)
    duplicates = sorted(name for name in defaults if name.split("_", 1)[1] in PLANNED_SETTINGS and name not in NOT_PLAN_SETTINGS)
    assert duplicates == [], "%s repeats plan settings: %s (set the plan role's plan_* instead)" % (role, duplicates)
    plan_defaults = yaml_file("roles/plan/defaults/main.yml")
    for setting in PLANNED_SETTINGS:
        if setting != "tensor_parallel_size":
            assert "plan_" + setting in plan_defaults, setting


def test_the_two_model_fleet_serves_each_servers_model_under_its_name(tmp_path):
    """molecule/vllm's gpufleet_models: t-vllm1 in model_tiny; t-vllm2 and t-vllm3 (a group) and t-vllm4 (alone) in
    model_tiny_b."""
    names = {}
    for host in ("t-vllm1", "t-vllm2", "t-vllm3", "t-vllm4"):
        plan = plan_for(INVENTORIES["molecule-vllm/" + host](), tmp_path)
        (served,) = {i["argv"][i["argv"].index("--served-model-name") + 1] for i in plan["instances"]}
        names[host] = (served, plan["launch"]["model_path"])
    b = ("tiny-b", "/var/lib/vllm/models/tiny-b")
    assert names == {"t-vllm1": ("tiny", "/var/lib/vllm/models/tiny"), "t-vllm2": b, "t-vllm3": b, "t-vllm4": b}


def test_the_second_server_of_tiny_b_plans_alone(tmp_path):
    """t-vllm4 is in tiny-b's model group, not in the server group: one instance of its own, no group."""
    plan = plan_for(INVENTORIES["molecule-vllm/t-vllm4"](), tmp_path)
    assert plan["topology"] != "pp" and not plan.get("group") and len(plan["instances"]) == 1, plan["topology"]


def test_the_group_of_the_vllm_scenario_plans_a_leader_and_a_follower(tmp_path):
    leader = plan_for(INVENTORIES["molecule-vllm/t-vllm2"](), tmp_path)
    follower = plan_for(INVENTORIES["molecule-vllm/t-vllm3"](), tmp_path)
    assert (leader["topology"], leader["group"]["node_rank"], follower["group"]["node_rank"]) == ("pp", 0, 1)
    assert leader["group"]["members"] == follower["group"]["members"]
    assert "--headless" in follower["instances"][0]["argv"] and "--headless" not in leader["instances"][0]["argv"]
