"""The application's start-up (genreid.service.app): what opening the services does to the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json
    from threadpoolctl import threadpool_info
    from genreid.service.app import open_services
    from genreid.service.settings import Settings

    def blas_threads():  # numpy's own (a wheel bundles it in numpy.libs); FAISS's follows its OpenMP threads
        return [pool["num_threads"] for pool in threadpool_info() if "numpy" in pool["filepath"]]

    before = blas_threads()
    open_services(Settings()).close()
    print(json.dumps([before, blas_threads()]))
""")


def test_opening_the_services_keeps_numpy_blas_on_the_calling_thread(make_settings):
    """In a process of its own (the limit is process-wide): a re-ranked query's small products stall when BLAS
    spreads them over threads that inference keeps busy."""
    settings = make_settings()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "GENREID_MODELS": str(settings.models),
           "GENREID_DATA": str(settings.data), "GENREID_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == [2] and after == [1]
