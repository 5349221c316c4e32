"""Two CPU processes under torchrun (gloo) train the generator for a few steps and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from genreid.training.presets import get_preset
    from genreid.training.stages.context import StageContext
    from genreid.training.stages.generator import train_generator
    from genreid.training.runtime import setup_runtime, unwrap

    data, run_dir, cache = map(Path, sys.argv[1:4])
    runtime = setup_runtime()
    ctx = StageContext(get_preset("tiny", generator_steps=4), data, run_dir, runtime, cache)
    model = unwrap(train_generator(ctx))
    torch.save(model.state_dict(), run_dir / f"rank{runtime.rank}.pt")
    torch.distributed.destroy_process_group()
    """
)


def test_two_ranks_hold_identical_weights(synthetic_root, cache_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(synthetic_root), str(run_dir), str(cache_dir)],
        check=True, env=env, timeout=300,
    )
    rank0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # Training moved the weights: the zero-initialised output layer is no longer zero.
    assert rank0["unet.head.weight"].abs().sum() > 0
