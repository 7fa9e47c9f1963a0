"""``obliviate track`` under ``accelerate launch`` with 2 CPU processes: the README's command (issue 14 item 2).

Every rank used to read OUTPUT_DIR/track.json, which only rank 0 writes after its last step: the other
rank raced that write (or read an older run's file) and the launch ended in ChildFailedError.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_line(fragment: str) -> list[str]:
    from tests.test_readme import bash_commands, blocks

    lines = [
        line for _, body in blocks((ROOT / "README.md").read_text()) for line in bash_commands(body) if fragment in line
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#", 1)[0])


def _launch(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[:2] == ["accelerate", "launch"], argv
    # CI's PATH has no venv bin: the same launcher, through this interpreter.
    from tests.helpers import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *argv[2:]]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def workdir(toy_dir, tmp_path):
    """A scratch checkout: recipes/ and the toy build at runs/toy, as the README's earlier steps leave them."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    shutil.copytree(toy_dir, tmp_path / "runs" / "toy")
    return tmp_path


@pytest.mark.slow
def test_readme_multi_process_command(workdir):
    argv = _readme_line("ddp-cpu.yaml")
    out = workdir / (argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else "runs/track")
    proc = _launch(argv, workdir)  # exactly as the README writes it
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "track.json").read_text())
    assert record["global_step"] > 0 and record["flagged"] > 0
    assert proc.stdout.count(f"step {record['global_step']}: ") == 1  # rank 0 alone prints the summary
    assert "[rank 0] obliviate track: 1 torch thread" in proc.stderr
    assert "[rank 1] obliviate track: 1 torch thread" in proc.stderr
    assert (out / "model" / "config.json").is_file()
    assert (out / "memorization" / "flagged.jsonl").is_file()


@pytest.mark.slow
def test_each_rank_prints_its_own_error(workdir):
    argv = _readme_line("ddp-cpu.yaml")
    argv += ["--set", "training.learning_rate=fast"]
    proc = _launch(argv, workdir)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert re.search(
            rf"\[rank {rank}\] obliviate track: error: [^\n]*learning_rate: expected a number, got 'fast'", proc.stderr
        ), proc.stderr[-2000:]
