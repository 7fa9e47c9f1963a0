"""Two processes (gloo, CPU) on an uneven split, 5 probes on 2 ranks, give what one process gives, and
every rank runs the same number of forward passes (what FSDP / ZeRO-3 need: a forward is a collective).

    python -m pytest -q tests/test_distributed.py -m slow
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# One worker under pytest -n: every test here reads the same two launches (the module fixture `runs`).
pytestmark = pytest.mark.xdist_group("distributed")


def _launch(n: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    # torchrun + Accelerator(cpu=True): accelerate's own launcher with the MULTI_GPU config on a machine without
    # GPUs gives every process world size 1 (DistributedType.NO), i.e. two independent single-process runs.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        str(ROOT / "tests" / "dist_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return _launch(1, tmp / "one.pt"), _launch(2, tmp / "two.pt")


@pytest.mark.slow
def test_every_rank_runs_the_same_number_of_forward_passes(runs):
    one, two = runs
    assert two["world"] == 2 and len(two["forwards"]) == 2
    first, second = two["forwards"]
    assert first == second, two["forwards"]
    # 5 probes padded to 3 per rank: two micro-batches of 2 per gradient kind pass, not 2 and 1
    assert first["gradients"] == 2 and one["forwards"][0]["gradients"] == 3


@pytest.mark.slow
def test_uneven_shards_gather_every_probe_once_like_one_process(runs):
    one, two = runs
    assert [r["id"] for r in two["rows"]] == [r["id"] for r in one["rows"]] and len(one["rows"]) == 5
    for a, b in zip(one["rows"], two["rows"]):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert b[key] == value, key


@pytest.mark.slow
def test_selection_gradients_steps_and_weights_match_one_process(runs):
    one, two = runs
    for stream, grads in one["grads"].items():
        for name, g in grads.items():
            assert torch.allclose(two["grads"][stream][name], g, atol=1e-6, rtol=1e-4), (stream, name)
    assert two["selection"].keys() == one["selection"].keys()
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    for name, w in one["weights"].items():
        assert torch.allclose(two["weights"][name], w, atol=1e-5), name


@pytest.mark.slow
def test_sharded_parameters_share_one_global_threshold(runs):
    """Each rank scores only its slice of every tensor; the all-reduced histograms pick what one process picks."""
    one, two = runs
    for scope in ("global", "per_tensor"):
        assert two["sharded"][scope] == one["sharded"][scope] and one["sharded"][scope], scope
