#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_plan
short_description: Choose how vLLM uses a server's GPUs (data parallel, tensor parallel, or vLLM's own data parallel), with reasons
version_added: 0.1.0
description:
  - Plans how vLLM serves one model on one server, from the server's GPU facts (or a catalogue profile of cards
    that are not there) and the model's C(config.json), and returns the plan in RV(plan), with every instance's
    complete launch (its vLLM argument vector and environment), built from the same values the figures are
    computed from.
  - Checks that weights plus the KV cache for O(max_model_len) x O(concurrency) tokens plus O(overhead_gib) fit
    within O(gpu_memory_utilization) of each card, for dense, mixture-of-experts (every expert counts) and
    multi-head latent attention (MLA) models. Weight bytes are exact when C(model.safetensors.index.json) or
    C(*.safetensors) files sit next to C(config.json) (only their headers are read), else computed from the
    parameter count.
  - Chooses data parallel (one vLLM per card) when a copy fits one card, tensor parallel of the smallest degree
    that fits otherwise (several tensor-parallel instances on four or more cards), and vLLM's own
    C(--data-parallel-size) when O(single_endpoint=true). For O(objective=latency) it estimates the per-token
    time at batch 1 from the card's memory bandwidth and the interconnect, and uses tensor parallel only when
    that pays.
  - With O(group) (the host's server group), a model that does not fit this server is planned across servers of
    the group with vLLM's own multi-node launch, tensor parallel inside each server and pipeline parallel across
    them (topology V(pp)), over the smallest number of servers whose fullest card fits; a group of twice that or more
    is split into several such pipelines. A model that fits this server ignores the group.
  - Refuses MIG-enabled cards, and models that fit nowhere, saying by how much they miss and what would fit
    (fewer tokens, fp8, int4, more or bigger cards). Every refusal names the parameter to change.
  - Reads only the model's files on the host the module runs on (delegate it to the control node to plan from
    a model there); changes nothing.
  - Sets no fact (a cached fact could outlive its plan); register the result and pass RV(plan) on explicitly.
author: gpufleet.serving contributors (@gpufleet)
requirements:
  - Python 3.8 or later. No third-party library.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
options:
  gpus:
    description:
      - The C(nvidia_gpus) facts of the server, as returned by M(gpufleet.serving.nvidia_gpu_facts).
      - Mutually exclusive with O(gpu_profile); one of the two is required.
    type: dict
  gpu_profile:
    description:
      - Plan for O(gpu_count) cards of a catalogue profile instead of real facts.
      - 'Profiles: V(rtx-3050-8gb), V(rtx-3060-12gb), V(rtx-3090), V(rtx-3090-nvlink), V(rtx-4060-ti-16gb),
        V(rtx-4090), V(rtx-5080), V(rtx-5090), V(rtx-a4000), V(rtx-a6000), V(rtx-a6000-nvlink), V(rtx-6000-ada),
        V(l4), V(l40s), V(a100-40gb), V(a100-80gb), V(a100-80gb-pcie), V(h100-pcie), V(h100-pcie-nvlink),
        V(h100-sxm), V(h200). Case, spaces and underscores do not matter.'
      - The V(-nvlink) profiles have NVLink bridges joining cards in pairs.
    type: str
  gpu_count:
    description:
      - How many O(gpu_profile) cards the server has. Required with O(gpu_profile).
    type: int
  model:
    description:
      - Path to the model directory (holding C(config.json), and ideally its safetensors files or index), or
        to the C(config.json) itself, on the host the module runs on.
      - The directory name is the model name in the plan.
    type: path
    required: true
  dtype:
    description:
      - Weight precision in memory. V(auto) takes the checkpoint's (a float32 checkpoint is served in 16 bits,
        as vLLM does; a quantized checkpoint's C(quantization_config) gives V(fp8) or V(int4)).
      - V(fp8) is vLLM's on-load FP8 quantization of the linear layers; V(int4) needs an AWQ or GPTQ checkpoint.
      - "The KV cache is planned in the activation dtype (vLLM's C(kv_cache_dtype=auto)), 16 bits or 32 with V(float32)."
      - The launch passes the resolved dtype as C(--dtype) (C(--quantization fp8) for V(fp8) on a 16-bit checkpoint).
      - V(float32) is for vLLM's CPU build (O(device=cpu)); weights and KV cache then take 4 bytes.
    type: str
    choices: [auto, bfloat16, float16, float32, fp8, int4]
    default: auto
  max_model_len:
    description:
      - Context length in tokens each sequence may reach (vLLM's C(--max-model-len)).
      - Defaults to the model's C(max_position_embeddings), as vLLM does.
    type: int
  concurrency:
    description:
      - How many sequences at full O(max_model_len) each instance must hold in its KV cache at once.
    type: int
    default: 1
  gpu_memory_utilization:
    description:
      - Fraction of each card vLLM may use (vLLM's C(--gpu-memory-utilization)).
    type: float
    default: 0.9
  objective:
    description:
      - V(throughput) prefers data parallel whenever a copy fits one card.
      - V(latency) also weighs tensor parallel for per-token time at batch 1, using the interconnect.
    type: str
    choices: [throughput, latency]
    default: throughput
  single_endpoint:
    description:
      - Serve every copy behind one vLLM port. With a model that fits one card this gives vLLM's own
        C(--data-parallel-size) (topology V(vllm_dp)) instead of separate instances behind a load balancer.
    type: bool
    default: false
  topology:
    description:
      - V(auto) lets the planner choose. V(dp), V(tp) and V(vllm_dp) force a topology; it is still checked for fit.
      - V(tp) fills all cards with tensor-parallel groups, so on four or more cards it may give V(tp_dp).
      - V(pp) plans the server group O(group) even when the model fits one server (tests, small models); it needs O(group).
    type: str
    choices: [auto, dp, tp, vllm_dp, pp]
    default: auto
  tensor_parallel_size:
    description:
      - Force this tensor-parallel degree. It must not exceed the number of cards, must divide the model's
        attention heads, and must fit.
    type: int
  base_port:
    description:
      - Port of the first instance. Data-parallel instances take O(base_port), O(base_port)+1, and so on;
        a single tensor-parallel or V(vllm_dp) instance takes O(base_port).
    type: int
    default: 8001
  overhead_gib:
    description:
      - GiB per card reserved beside weights and KV cache for activations, CUDA graphs and NCCL/cuBLAS workspaces.
    type: float
    default: 2.0
  group:
    description:
      - The server group this host belongs to (the inventory's C(gpufleet_server_group)), so that a model too big for
        one server is planned across the group's servers, and only across them.
      - Without it, nothing changes. With it, a model that fits this server is planned on this server alone (RV(plan.group) is
        V(null) and a reason says so); otherwise, or with O(topology=pp), the plan is this host's place in a pipeline of
        servers of the group, with tensor parallel over every card of a server, pipeline parallel over the smallest number of
        servers that holds the model, in inventory order; the members are split into consecutive pipelines
        V(<name>-0), V(<name>-1), ... and members left over are refused.
      - All members must have the same cards (name, memory and count) and the same O(group.members[].vllm_version);
        otherwise the plan is refused, naming the members that differ and in what.
    type: dict
    suboptions:
      name:
        description: The server group's name, 1-32 of V(a-z), V(0-9), V(_), V(-), starting with a letter or digit.
        type: str
      host:
        description: The inventory name of the host this plan is for; one of O(group.members[].host).
        type: str
      members:
        description: The group's servers in inventory order, this host included, 1 to 64 of them.
        type: list
        elements: dict
        suboptions:
          host:
            description: The member's inventory name.
            type: str
          address:
            description: The address the other members reach it by (an IPv4 or IPv6 literal, not a name; the units and the group guard let peers in by address).
            type: str
          gpus:
            description: The member's C(nvidia_gpus) facts (as O(gpus)); or O(group.members[].gpu_profile) and O(group.members[].gpu_count).
            type: dict
          gpu_profile:
            description: A catalogue profile of the member's cards (as O(gpu_profile)).
            type: str
          gpu_count:
            description: How many O(group.members[].gpu_profile) cards the member has.
            type: int
          vllm_version:
            description: The vLLM version the member runs; every member must run the same.
            type: str
      master_port:
        description: The TCP port of the leader's C(torch.distributed) store (vLLM's C(--master-port)), 1024-65535.
        type: int
        default: 29500
      interface:
        description:
          - The network interface the members reach each other on, for NCCL and gloo (C(NCCL_SOCKET_IFNAME), C(GLOO_SOCKET_IFNAME)).
          - 1-15 letters, digits, V(_), V(.), V(:), V(-), not starting with V(-).
        type: str
  measured:
    description:
      - A bake-off measurement file (written by C(playbooks/bakeoff.yml)) on the host the module runs on.
      - With O(topology=auto), the newest measurement of the same model on the same cards (count, name, memory,
        interconnect) with the same dtype, O(max_model_len) and O(gpu_memory_utilization), at most
        O(measured_max_age_days) old, decides the topology for O(objective) instead of the estimates, and the
        reasons say so with the figures. Other measurements are ignored, and the reasons say why.
      - A file that does not exist yet is noted in the reasons; a malformed one fails the plan.
    type: path
  measured_max_age_days:
    description:
      - Measurements older than this many days are ignored.
    type: int
    default: 90
  device:
    description:
      - V(cuda) launches vLLM's CUDA build on the cards.
      - V(cpu) launches vLLM's CPU build standing in for them (tests, demo). The topology is still planned for the
        cards, one worker process per planned card, and the KV cache of each worker is O(cpu_kvcache_space_gib)
        (vLLM's C(--kv-cache-memory-bytes)), so the plan's KV tokens are that space.
    type: str
    choices: [cuda, cpu]
    default: cuda
  cpu_kvcache_space_gib:
    description:
      - With O(device=cpu), GiB of KV cache each worker allocates, from 0.0625 (64 MiB). The launch gives vLLM the
        bytes (C(--kv-cache-memory-bytes)); C(VLLM_CPU_KVCACHE_SPACE), whole GiB only, would override them and is
        never set.
    type: float
    default: 1
  max_num_seqs:
    description:
      - vLLM's C(--max-num-seqs), sequences an instance runs at once. It must be at least O(concurrency).
      - V(0) gives 256 (vLLM's usual default), or O(concurrency) when that is larger.
    type: int
    default: 0
  launch:
    description:
      - Settings of each instance's launch that change neither the fit nor the topology.
      - Every instance gets C(--model), C(--served-model-name), C(--host), C(--port), C(--max-model-len), C(--dtype),
        C(--gpu-memory-utilization) (CUDA build), C(--max-num-seqs), C(--tensor-parallel-size) (above 1) and
        C(--data-parallel-size) (V(vllm_dp)) from the plan, then C(--enforce-eager), C(--shutdown-timeout) and
        O(launch.extra_args).
    type: dict
    default: {}
    suboptions:
      model_path:
        description: Where vLLM reads the model on the server. Empty means C(/var/lib/vllm/models/<served_model_name>).
        type: str
        default: ""
      served_model_name:
        description: The model name clients send. Empty means the model's directory name.
        type: str
        default: ""
      host:
        description:
          - Address vLLM binds (loopback, so that only the gateway reaches it).
          - An address that is not loopback (V(0.0.0.0), a fleet address) is refused unless O(launch.allow_remote_host) is set.
        type: str
        default: 127.0.0.1
      allow_remote_host:
        description:
          - Let O(launch.host) be an address other than loopback. vLLM has no access control of its own; only set this when
            something else (a firewall, the unit's address allow-list) keeps other hosts away.
        type: bool
        default: false
      enforce_eager:
        description: Pass C(--enforce-eager) (no CUDA graphs).
        type: bool
        default: false
      extra_args:
        description:
          - Further vLLM arguments, one per item (a value with a space stays one argument).
          - An argument the plan sets (C(--max-model-len), C(--gpu-memory-utilization), C(--tensor-parallel-size),
            C(--kv-cache-memory), C(--max-num-seqs), C(--dtype), C(--port), ...; also in C(--x=value) form) is refused
            with the setting to use instead.
        type: list
        elements: str
        default: []
      extra_env:
        description:
          - Further environment variables. Those that would change a plan's setting (C(CUDA_VISIBLE_DEVICES),
            C(VLLM_CPU_KVCACHE_SPACE), ...) are refused; values are limited to a safe character set.
        type: dict
        default: {}
      shutdown_timeout_sec:
        description: Seconds a stopping vLLM finishes its requests (C(--shutdown-timeout)); V(0) leaves the argument out.
        type: int
        default: 60
      http_keepalive_sec:
        description: Seconds vLLM keeps an idle HTTP connection (C(VLLM_HTTP_TIMEOUT_KEEP_ALIVE)), 10 or more.
        type: int
        default: 75
      cpu_bind_cores:
        description: With O(device=cpu), pin each worker to the core standing in for its card (C(VLLM_CPU_OMP_THREADS_BIND)).
        type: bool
        default: false
      allreduce_multicast:
        description:
          - Let a tensor-parallel instance on the cards use all-reduce paths that open NVLink multicast (vLLM's fused
            all-reduce and RMSNorm through FlashInfer, symmetric memory, NCCL NVLS).
          - V(false) turns them off with C(--compilation-config) (C(fuse_allreduce_rms) false) and C(NCCL_NVLS_ENABLE=0),
            C(TORCH_SYMM_MEM_DISABLE_MULTICAST=1), C(NVSHMEM_DISABLE_NVLS=1), C(VLLM_ALLREDUCE_USE_SYMM_MEM=0),
            C(VLLM_ALLREDUCE_USE_FLASHINFER=0), C(VLLM_FLASHINFER_ALLREDUCE_BACKEND=trtllm); without tensor parallel
            nothing changes.
        type: bool
        default: false
      scale_out:
        description:
          - Start vLLM with C(--enable-scale-out), which registers its render endpoints (C(/v1/completions/render),
            C(/v1/chat/completions/render)) that vLLM's router asks before it picks an instance.
          - The plan role sets it for a server whose model has C(balance=cache_aware) in C(gpufleet_models).
        type: bool
        default: false
  variable_prefix:
    description:
      - Prefix of the setting names in the messages of a refused launch (the C(gpufleet.serving.plan) role passes
        V(plan_), so that a refusal names its variable).
    type: str
    default: ""
notes:
  - Supports check mode; the module never changes anything.
  - The rules and the measured figures behind them are explained in the collection's C(docs/planner.md).
seealso:
  - module: gpufleet.serving.nvidia_gpu_facts
"""

EXAMPLES = r"""
- name: Read the GPUs
  gpufleet.serving.nvidia_gpu_facts:

- name: Plan from the facts, with the model's config.json on the control node
  gpufleet.serving.vllm_plan:
    gpus: "{{ ansible_facts['nvidia_gpus'] }}"
    model: /srv/models/Llama-3.1-8B-Instruct
    max_model_len: 32768
    concurrency: 4
  delegate_to: localhost

- name: What would two RTX 5080s do with a 70B model?
  gpufleet.serving.vllm_plan:
    gpu_profile: rtx-5080
    gpu_count: 2
    model: /srv/models/Llama-3.1-70B-Instruct/config.json
    dtype: fp8
  delegate_to: localhost

- name: Let the last bake-off on these cards decide
  gpufleet.serving.vllm_plan:
    gpus: "{{ ansible_facts['nvidia_gpus'] }}"
    model: /srv/models/Llama-3.1-8B-Instruct
    measured: /srv/fleet/bakeoff/measured.json
  delegate_to: localhost

- name: One endpoint, latency first
  gpufleet.serving.vllm_plan:
    gpus: "{{ ansible_facts['nvidia_gpus'] }}"
    model: /srv/models/Qwen2.5-7B-Instruct
    objective: latency
    single_endpoint: true
  delegate_to: localhost
"""

RETURN = r"""
plan:
  description: How vLLM should use this server's cards, and why; with each instance's launch.
  returned: success
  type: complex
  contains:
    topology:
      description: V(dp) one vLLM per card; V(tp) one tensor-parallel vLLM; V(tp_dp) several tensor-parallel
        instances; V(vllm_dp) one vLLM with C(--data-parallel-size) (and C(--tensor-parallel-size) when above 1);
        V(pp) this host's part of a pipeline over the servers of RV(plan.group).
      type: str
      returned: success
      sample: dp
    pipeline_parallel_size:
      description: With V(pp), the servers of the pipeline (C(--pipeline-parallel-size), one stage per server).
      type: int
      returned: when topology is V(pp)
      sample: 2
    group:
      description:
        - With O(group) given, V(null) when the model fits this server alone; with V(pp), this host's pipeline.
        - C(name) (V(<group>-<n>)), C(nnodes), C(node_rank) (this host's rank), C(leader) and C(master_addr) (rank 0's
          inventory name and address), C(master_port), C(interface), and C(members) (C(host), C(address), C(rank)) of
          this pipeline only.
      type: dict
      returned: when O(group) is given
      sample:
        name: big-0
        nnodes: 2
        node_rank: 1
        leader: gpu1
        master_addr: 10.0.0.1
        master_port: 29500
        interface: eth0
        members: [{host: gpu1, address: 10.0.0.1, rank: 0}, {host: gpu2, address: 10.0.0.2, rank: 1}]
    tensor_parallel_size:
      description: Cards per copy of the model (C(--tensor-parallel-size)).
      type: int
      returned: success
      sample: 1
    data_parallel_size:
      description: Copies of the model on the server (instances for V(dp)/V(tp_dp), C(--data-parallel-size) for V(vllm_dp)).
      type: int
      returned: success
      sample: 2
    instances:
      description:
        - One entry per vLLM process. Names are V(0), V(1), ... for V(dp) and V(tp_dp) (units C(vllm@0),
          C(vllm@1)); V(main) for the single V(tp) or V(vllm_dp) process.
      type: list
      elements: dict
      returned: success
      sample:
        - name: "0"
          gpus: [0]
          port: 8001
          env: {CUDA_VISIBLE_DEVICES: "0", CUDA_DEVICE_ORDER: PCI_BUS_ID}
        - name: "1"
          gpus: [1]
          port: 8002
          env: {CUDA_VISIBLE_DEVICES: "1", CUDA_DEVICE_ORDER: PCI_BUS_ID}
      contains:
        name:
          description: Instance name.
          type: str
        gpus:
          description: Card indices (NVML order, which is PCI bus order).
          type: list
          elements: int
        port:
          description: TCP port of the instance.
          type: int
        env:
          description:
            - Environment of the process. C(CUDA_DEVICE_ORDER=PCI_BUS_ID) always, so CUDA numbers cards as NVML does;
              C(NCCL_P2P_DISABLE=1) for tensor parallel across cards without working P2P.
          type: dict
    memory:
      description: The numbers behind the plan.
      type: complex
      returned: success
      contains:
        params:
          description: Parameter count (every expert included).
          type: int
          sample: 8030261248
        weights_bytes:
          description: Bytes of weights in memory for the whole model.
          type: int
          sample: 16060522496
        weights_bytes_per_gpu:
          description: Bytes of weights on each card of an instance.
          type: int
          sample: 16060522496
        kv_bytes_per_token:
          description: KV-cache bytes per token for the whole model (all layers and KV heads).
          type: int
          sample: 131072
        kv_tokens_per_instance:
          description: Tokens of KV cache each instance can hold.
          type: int
          sample: 896235
        max_concurrency:
          description: Sequences of O(max_model_len) tokens each instance can hold at once.
          type: float
          sample: 6.84
    reasons:
      description: Sentences that give the numbers behind the choice.
      type: list
      elements: str
      returned: success
    warnings:
      description: What the operator should know or fix (no P2P, unused cards, busy memory...).
      type: list
      elements: str
      returned: success
    model:
      description: Model name (the model directory's name).
      type: str
      returned: success
      sample: Llama-3.1-8B
    cards:
      description: The cards in words.
      type: str
      returned: success
      sample: 2 x NVIDIA H200 (140.4 GiB each, NVLink)
    dtype:
      description: Weight precision planned (V(auto) resolved).
      type: str
      returned: success
      sample: bfloat16
    max_model_len:
      description: Context length planned (O(max_model_len) or the model's maximum).
      type: int
      returned: success
      sample: 131072
    gpu_memory_utilization:
      description: The fraction planned, to pass on to vLLM.
      type: float
      returned: success
      sample: 0.9
    source:
      description: V(measured) when a bake-off measurement chose (or confirmed) the topology, V(estimated) otherwise.
      type: str
      returned: success
      sample: measured
    interconnect:
      description: Weakest link inside a tensor-parallel group (V(nvlink), V(pcie_p2p), V(pcie_no_p2p)); V(null) without tensor parallel.
      type: str
      returned: success
      sample: nvlink
    device:
      description: The vLLM build planned (O(device)).
      type: str
      returned: success
      sample: cuda
    max_num_seqs:
      description: vLLM's C(--max-num-seqs) for every instance.
      type: int
      returned: success
      sample: 256
    cpu_kvcache_space_gib:
      description: With O(device=cpu), the KV cache of each worker in GiB.
      type: float
      returned: when O(device=cpu)
    quantized_checkpoint:
      description: Whether the checkpoint itself is quantized (fp8 or int4), so that vLLM reads its quantization from it.
      type: bool
      returned: success
    launch:
      description: The launch settings used (O(launch) with defaults filled in) and C(entrypoint), the interpreter arguments.
      type: dict
      returned: success
param:
  description: On failure, the parameter to change.
  returned: failure
  type: str
  sample: model
details:
  description: On failure, what was known (C(model) name, C(cards) in words), for reports.
  returned: failure
  type: dict
  sample: {model: Llama-3.1-70B, cards: "2 x NVIDIA GeForce RTX 5080 (16.0 GiB each, PCIe without P2P)"}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import DEFAULT_SETTINGS, DEVICES
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_planner import (
    DEFAULT_BASE_PORT,
    DEFAULT_CPU_KVCACHE_SPACE_GIB,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MASTER_PORT,
    DEFAULT_MEASURED_MAX_AGE_DAYS,
    DEFAULT_OVERHEAD_GIB,
    DTYPES,
    OBJECTIVES,
    TOPOLOGIES,
    PlanError,
    plan,
)

PLAN_ARGUMENTS = (
    "gpus",
    "gpu_profile",
    "gpu_count",
    "model",
    "dtype",
    "max_model_len",
    "concurrency",
    "gpu_memory_utilization",
    "objective",
    "single_endpoint",
    "topology",
    "tensor_parallel_size",
    "base_port",
    "overhead_gib",
    "measured",
    "measured_max_age_days",
    "device",
    "cpu_kvcache_space_gib",
    "max_num_seqs",
    "group",
)
# Options that are not planning inputs.
OTHER_ARGUMENTS = ("launch", "variable_prefix")

LAUNCH_SPEC = dict(
    model_path=dict(type="str", default=DEFAULT_SETTINGS["model_path"]),
    served_model_name=dict(type="str", default=DEFAULT_SETTINGS["served_model_name"]),
    host=dict(type="str", default=DEFAULT_SETTINGS["host"]),
    enforce_eager=dict(type="bool", default=DEFAULT_SETTINGS["enforce_eager"]),
    extra_args=dict(type="list", elements="str", default=[]),
    extra_env=dict(type="dict", default={}),
    shutdown_timeout_sec=dict(type="int", default=DEFAULT_SETTINGS["shutdown_timeout_sec"]),
    http_keepalive_sec=dict(type="int", default=DEFAULT_SETTINGS["http_keepalive_sec"]),
    cpu_bind_cores=dict(type="bool", default=DEFAULT_SETTINGS["cpu_bind_cores"]),
    allreduce_multicast=dict(type="bool", default=DEFAULT_SETTINGS["allreduce_multicast"]),
    allow_remote_host=dict(type="bool", default=DEFAULT_SETTINGS["allow_remote_host"]),
    scale_out=dict(type="bool", default=DEFAULT_SETTINGS["scale_out"]),
)
GROUP_MEMBER_SPEC = dict(
    host=dict(type="str"),
    address=dict(type="str"),
    gpus=dict(type="dict"),
    gpu_profile=dict(type="str"),
    gpu_count=dict(type="int"),
    vllm_version=dict(type="str"),
)
# Only types here: the planner checks the values (planner_group.check_group), naming group.<key>.
GROUP_SPEC = dict(
    name=dict(type="str"),
    host=dict(type="str"),
    members=dict(type="list", elements="dict", options=GROUP_MEMBER_SPEC),
    master_port=dict(type="int", default=DEFAULT_MASTER_PORT),
    interface=dict(type="str"),
)
PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{0,32}$")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(type="dict"),
            gpu_profile=dict(type="str"),
            gpu_count=dict(type="int"),
            model=dict(type="path", required=True),
            dtype=dict(type="str", choices=list(DTYPES), default="auto"),
            max_model_len=dict(type="int"),
            concurrency=dict(type="int", default=1),
            gpu_memory_utilization=dict(type="float", default=DEFAULT_GPU_MEMORY_UTILIZATION),
            objective=dict(type="str", choices=list(OBJECTIVES), default="throughput"),
            single_endpoint=dict(type="bool", default=False),
            topology=dict(type="str", choices=list(TOPOLOGIES), default="auto"),
            tensor_parallel_size=dict(type="int"),
            base_port=dict(type="int", default=DEFAULT_BASE_PORT),
            overhead_gib=dict(type="float", default=DEFAULT_OVERHEAD_GIB),
            measured=dict(type="path"),
            measured_max_age_days=dict(type="int", default=DEFAULT_MEASURED_MAX_AGE_DAYS),
            device=dict(type="str", choices=list(DEVICES), default="cuda"),
            cpu_kvcache_space_gib=dict(type="float", default=DEFAULT_CPU_KVCACHE_SPACE_GIB),
            max_num_seqs=dict(type="int", default=0),
            group=dict(type="dict", options=GROUP_SPEC),
            launch=dict(type="dict", default={}, options=LAUNCH_SPEC),
            variable_prefix=dict(type="str", default=""),
        ),
        mutually_exclusive=[("gpus", "gpu_profile")],
        required_together=[("gpu_profile", "gpu_count")],
        required_one_of=[("gpus", "gpu_profile")],
        supports_check_mode=True,
    )
    if not PREFIX_RE.match(module.params["variable_prefix"]):
        module.fail_json(
            msg="variable_prefix must be up to 32 letters, digits or _ (such as plan_), not %r" % module.params["variable_prefix"], param="variable_prefix"
        )
    try:
        result = plan(
            launch=module.params["launch"],
            launch_prefix=module.params["variable_prefix"],
            **{name: module.params[name] for name in PLAN_ARGUMENTS},
        )
    except PlanError as exc:
        module.fail_json(msg=str(exc), param=exc.param, details=exc.details)
    except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError, MemoryError) as exc:
        # A last resort: every input is checked above; this names what was being read rather than end in a traceback.
        module.fail_json(
            msg="model, gpus: planning %s stopped on an unexpected %s (%s); check the model's files and the facts, and report this input"
            % (module.params["model"], type(exc).__name__, exc),
            param="model",
        )
    module.exit_json(changed=False, plan=result)


if __name__ == "__main__":
    main()
