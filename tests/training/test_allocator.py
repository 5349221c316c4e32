"""training/allocator.py: `genreid train` re-executes itself under jemalloc, really preloaded."""

import subprocess
import sys
from pathlib import Path

import pytest

from genreid.training.allocator import LIBRARY, MALLOC_CONF, SWITCH, find_jemalloc, jemalloc_environment

LIB = Path("/usr/lib/x86_64-linux-gnu") / LIBRARY


def test_the_environment_appends_jemalloc_to_the_preload_and_keeps_a_given_malloc_conf():
    env = jemalloc_environment({"PATH": "/bin", "LD_PRELOAD": "/opt/libother.so"}, LIB)
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"/opt/libother.so {LIB}", "MALLOC_CONF": MALLOC_CONF}
    assert jemalloc_environment({"MALLOC_CONF": "narenas:2"}, LIB)["MALLOC_CONF"] == "narenas:2"


def test_no_reexecution_when_switched_off_or_preloaded_already():
    assert jemalloc_environment({SWITCH: "system"}, LIB) is None
    assert jemalloc_environment({"LD_PRELOAD": str(LIB)}, LIB) is None


def test_find_jemalloc_looks_only_in_the_given_folders(tmp_path):
    assert find_jemalloc((str(tmp_path),)) is None
    (tmp_path / LIBRARY).write_bytes(b"")
    assert find_jemalloc(("/nonexistent", str(tmp_path))) == tmp_path / LIBRARY


CHILD = """
import sys
from genreid.training.allocator import current_allocator, reexec_under_jemalloc
reexec_under_jemalloc()
print(sys.argv[1:], 'jemalloc' in open('/proc/self/maps').read(), current_allocator())
"""


@pytest.mark.skipif(find_jemalloc() is None, reason=f"{LIBRARY} is not installed (apt install libjemalloc2)")
@pytest.mark.parametrize(("switch", "loaded"), [("jemalloc", True), ("system", False)])
def test_a_process_reexecutes_itself_under_jemalloc_with_its_arguments(switch, loaded):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]), SWITCH: switch}
    done = subprocess.run([sys.executable, "-c", CHILD, "a", "b c"], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    assert done.stdout.strip() == f"['a', 'b c'] {loaded} {'jemalloc' if loaded else 'system malloc'}"
    assert done.stderr == ""
