"""The launch of a group of servers (topology pp): vLLM's multi-node arguments, the guard's options, the checks."""

import copy
import json

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_launch as vl
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner as vp

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
    "torch_dtype": "float32",
}
PY, GUARD, HEADLESS = "/opt/vllm/venv/bin/python", "/opt/vllm/gpufleet-group-guard.py", "/opt/vllm/vllm-headless.py"


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(TINY))
    return str(tmp_path / "tiny")


def plans(tiny, last="10.0.0.2", **launch):
    """The two members' plans (topology pp forced on a model that fits one card); ``last``: the follower's address."""
    card = {"gpu_profile": "h100-sxm", "gpu_count": 1}
    members = [dict(card, host="gpu1", address="10.0.0.1", vllm_version="0.26.0"), dict(card, host="gpu2", address=last, vllm_version="0.26.0")]
    out = []
    for member in members:
        group = {"name": "trio", "host": member["host"], "members": members, "master_port": 29500, "interface": "ens1"}
        out.append(vp.plan(model=tiny, topology="pp", max_model_len=1024, launch=dict(launch), group=group, **card))
    return out


def option(argv, name):
    return argv[argv.index(name) + 1]


def test_each_member_gets_vllm_multi_node_arguments(tiny):
    for rank, plan in enumerate(plans(tiny)):
        (instance,) = plan["instances"]
        argv = instance["argv"]
        assert [option(argv, o) for o in ("--pipeline-parallel-size", "--nnodes", "--node-rank", "--master-addr", "--master-port")] == [
            "2", "2", str(rank), "10.0.0.1", "29500"]  # fmt: skip
        assert ("--headless" in argv) == (rank > 0)
        assert instance["role"] == ("leader" if rank == 0 else "follower")
        env = instance["env"]
        assert (env["VLLM_HOST_IP"], env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) == ("10.0.0.%d" % (rank + 1), "ens1", "ens1")
        assert vl.launch_mismatches(plan) == []


def test_guard_options_leader_listens_followers_connect(tiny):
    leader, follower = plans(tiny)
    assert leader["instances"][0]["guard_argv"] == [
        "--role", "leader", "--group", "trio-0", "--rank", "0", "--nnodes", "2", "--address", "10.0.0.1", "--port", "29501",
        "--members", "10.0.0.2"]  # fmt: skip
    assert follower["instances"][0]["guard_argv"] == [
        "--role", "follower", "--group", "trio-0", "--rank", "1", "--nnodes", "2", "--address", "10.0.0.1", "--port", "29501"]  # fmt: skip


def test_exec_start_runs_the_guard_then_the_members_command(tiny):
    leader, follower = plans(tiny)
    words = vl.systemd_split(vl.instance_exec_start(PY, leader["instances"][0], GUARD, HEADLESS))
    guard = [PY, "-I", "-s", GUARD, *leader["instances"][0]["guard_argv"], "--"]
    assert words == [*guard, PY, "-m", "vllm.entrypoints.openai.api_server", *leader["instances"][0]["argv"]]
    words = vl.systemd_split(vl.instance_exec_start(PY, follower["instances"][0], GUARD, HEADLESS))
    assert words[words.index("--") + 1 :] == [PY, "-I", "-s", HEADLESS, *follower["instances"][0]["argv"]]
    # Without a group: exactly what exec_start gives.
    plain = dict(leader["instances"][0])
    plain.pop("guard_argv")
    plain.pop("role")
    assert vl.instance_exec_start(PY, plain) == vl.exec_start(PY, plain["argv"])
    with pytest.raises(ValueError, match="group guard"):
        vl.instance_exec_start(PY, leader["instances"][0], "relative/guard", HEADLESS)
    with pytest.raises(ValueError, match="headless launcher"):
        vl.instance_exec_start(PY, follower["instances"][0], GUARD, "")


def test_the_launch_digest_covers_the_guard(tiny):
    """The leader's argv and env do not name its followers, its guard does: a moved follower restarts the leader."""
    leader = plans(tiny)[0]["instances"][0]
    moved = plans(tiny, last="10.0.0.7")[0]["instances"][0]
    assert (leader["argv"], leader["env"]) == (moved["argv"], moved["env"])
    assert leader["launch_sha1"] != moved["launch_sha1"]


@pytest.mark.parametrize("arg", ["--nnodes", "--node-rank", "--master-addr", "--master-port", "--headless", "--pipeline-parallel-size", "-pp"])
def test_extra_args_cannot_change_the_group(tiny, arg):
    with pytest.raises(vp.PlanError) as exc:
        plans(tiny, extra_args=[arg, "2"])
    assert arg in str(exc.value)


@pytest.mark.parametrize("key", ["VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"])
def test_extra_env_cannot_change_the_groups_network(tiny, key):
    with pytest.raises(vp.PlanError) as exc:
        plans(tiny, extra_env={key: "lo"})
    assert key in str(exc.value)


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("group", "name"), "Trio Zero", "group name"),
        (("group", "nnodes"), 1, "nnodes"),
        (("group", "node_rank"), 5, "node_rank"),
        (("group", "master_addr"), "-x", "master_addr"),
        (("group", "master_addr"), "10.0.0.9", "rank 0's"),
        (("group", "master_port"), 65535, "master_port"),
        (("group", "interface"), "eth0 lo", "interface"),
        (("group", "members"), [], "members"),
        (("pipeline_parallel_size",), 3, "pipeline_parallel_size"),
        (("topology",), "tp", "only topology pp has a group"),
    ],
)
def test_check_plan_refuses_a_group_vllm_cannot_run(tiny, path, value, words):
    plan = copy.deepcopy(plans(tiny)[1])
    target = plan
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(vl.LaunchError) as exc:
        vl.check_plan(plan)
    assert words in str(exc.value)


@pytest.mark.parametrize("address", ["gpu2.fleet.example", "gpu2", "fe80::2%ens1", "10.0.0.256"])
def test_a_member_named_instead_of_addressed_is_refused(tiny, address):
    """IPAddressAllow= and the group guard compare peers by address: a name in a plan made by hand is refused."""
    plan = copy.deepcopy(plans(tiny)[0])
    plan["group"]["members"][1]["address"] = address
    with pytest.raises(vl.LaunchError) as exc:
        vl.check_plan(plan)
    assert exc.value.param == "gpufleet_group_address" and "needs an IP address" in str(exc.value), str(exc.value)


def test_a_member_edited_by_hand_is_refused(tiny):
    plan = copy.deepcopy(plans(tiny)[1])
    plan["instances"][0]["argv"].remove("--headless")
    with pytest.raises(vl.LaunchError, match="--headless"):
        vl.check_plan(plan)


@pytest.mark.parametrize(("key", "value"), [("guard_argv", ["--role", "leader"]), ("role", "leader")])
def test_guard_options_edited_by_hand_are_refused(tiny, key, value):
    plan = copy.deepcopy(plans(tiny)[1])
    plan["instances"][0][key] = value
    with pytest.raises(vl.LaunchError, match="guard options or role"):
        vl.check_plan(plan)
