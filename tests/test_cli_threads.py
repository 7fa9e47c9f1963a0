"""``--threads``: one choice of torch's intra-op threads, made once in ``cli.main`` and logged (issue 14 item 11)."""

from __future__ import annotations

import pytest
import torch

from obliviate.cli import THREADED, build_parser, main
from obliviate.threads import DEFAULT_THREADS, configure_threads, resolve_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == DEFAULT_THREADS == 1  # measured faster on small and shared CPUs
    assert resolve_threads(2) == 2
    assert resolve_threads(0) is None  # torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None) == 3  # the user's environment wins over our default
    assert resolve_threads(2) == 2  # and --threads over the environment
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        resolve_threads(-1)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        resolve_threads(None)


def test_configure_sets_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads(2) == 2 == torch.get_num_threads()
    assert configure_threads(None) == 1 == torch.get_num_threads()


@pytest.mark.parametrize("command", THREADED)
def test_every_torch_command_takes_threads(command):
    assert set(THREADED) == {"toy", "track", "score", "erase", "demo", "bench", "study"}
    required = {
        "toy": ["--out", "x"],
        "track": ["--config", "r.yaml"],
        "erase": ["--out", "x"],
        "score": ["--model", "m", "--probes", "p", "--out", "x"],
        "demo": [],
        "bench": ["--model", "m", "--config", "c", "--out", "x"],
        "study": ["recipes/studies/skew.yaml"],
    }
    args = build_parser().parse_args([command, *required[command], "--threads", "2"])
    assert args.threads == 2


def test_main_sets_the_threads_before_the_command_runs_and_logs_it(monkeypatch, capsys):
    import obliviate.commands.toy as toy

    seen = []
    monkeypatch.setattr(toy, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    assert main(["toy", "--out", "unused", "--threads", "2"]) == 0
    assert main(["toy", "--out", "unused"]) == 0
    assert seen == [2, 1]
    err = capsys.readouterr().err
    assert "obliviate toy: 2 torch threads" in err and "obliviate toy: 1 torch thread " in err


def test_before_torch_is_imported_the_count_goes_to_its_environment(tmp_path):
    """The CLI must not import torch to set threads (a recipe typo fails before that import); torch then uses it."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from obliviate.threads import configure_threads; n = configure_threads(2); "
        "assert 'torch' not in sys.modules; import torch; print(n, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2"]
