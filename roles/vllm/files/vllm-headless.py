# vllm-headless (gpufleet.serving.vllm): `vllm serve <arguments> --headless`,
# a follower of a group of servers, through vLLM's own CLI (vllm_headless.py of
# the collection's module_utils, under lib/ beside this file, says why it is
# not the `vllm` command itself). Not executable: the unit runs it as
# `<vLLM's python> -I -s <this file> <the plan's arguments>`.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_headless  # pylint: disable=wrong-import-position

# At import, not only in main: vLLM's workers are spawned processes that import this file again.
vllm_headless.install_version_fallback()

if __name__ == "__main__":
    raise SystemExit(vllm_headless.main(sys.argv[1:]))
