# gpufleet-group-guard (gpufleet.serving.vllm): keeps the members of a group of
# servers (topology pp) alive together. The work is done by group_guard.py of
# the collection's module_utils, installed beside this file under lib/; this
# file only puts that folder on the import path. Not executable: the unit runs
# it as `<vLLM's python> -I -s <this file> <options> -- <vLLM's command>`.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

from ansible_collections.gpufleet.serving.plugins.module_utils import group_guard  # pylint: disable=wrong-import-position

if __name__ == "__main__":
    raise SystemExit(group_guard.main(sys.argv[1:]))
