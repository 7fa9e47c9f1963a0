"""The README as written: every bash and Python block runs, in order, on a CPU machine (issue 14 item 9).

Offline, from a scratch directory holding the repository's recipes/. A ``(quick: ...)`` note at the end of a
line is the README's own statement of the tiny settings used here: for a bash line the flags are appended,
for a Python line ``old -> new`` is substituted. Only the lines in ``SKIPPED`` do not run, each with why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {
    "make demo": "creates .venv (installs packages); the demo it runs is tests/test_demo.py's subject",
    "make test": "runs this test suite",
    "accelerate launch --config_file recipes/accelerate/ddp-cpu.yaml": "2 processes: tests/test_cli_track.py::test_readme_multi_process_command runs it (slow tier)",
    "accelerate launch --config_file recipes/accelerate/ddp-gpu.yaml": "needs GPUs",
    "torchrun": "2 processes: the launcher of the accelerate line above, which the slow test runs",
}
QUICK = re.compile(r"\(quick: (.+?)\)\s*$")
PRODUCES = {  # what the README says each command writes
    "obliviate toy": ["runs/toy/base/config.json", "runs/toy/train.jsonl", "runs/toy/probes.jsonl"],
    "obliviate track": [
        "runs/track/model/config.json",
        "runs/track/memorization/flagged.jsonl",
        "runs/track/track.json",
    ],
    "obliviate erase": ["runs/erased/model.safetensors", "runs/erased/erasure_report.json"],
    "obliviate report": ["runs/erased/report.md", "runs/erased/report.html"],
    "obliviate bench": ["runs/utility-erased/utility.json"],
    "python": [
        "runs/my-sft/memorization/history.jsonl",
        "runs/my-sft/model/config.json",
        "runs/my-sft/model/tokenizer.json",
    ],
}


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced bash / python block, in order."""
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def bash_commands(body: str) -> list[str]:
    """Commands of a bash block: continuations joined, comment-only and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def quick_bash(line: str) -> list[str]:
    """The command with its comment dropped and its quick flags appended, as argv."""
    import shlex

    quick = QUICK.search(line)
    command = line.split("#", 1)[0].strip()
    return shlex.split(command) + (shlex.split(quick.group(1)) if quick else [])


def quick_python(body: str) -> str:
    out = []
    for line in body.splitlines():
        quick = QUICK.search(line)
        if quick:
            old, new = (part.strip() for part in quick.group(1).split("->"))
            assert old in line, f"quick note {old!r} does not match its line: {line}"
            line = line.replace(old, new, 1)
        out.append(line)
    return "\n".join(out) + "\n"


def test_readme_blocks_run_in_order(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "WANDB_DISABLED": "true",
    }
    ran, skipped = [], []

    def run(argv: list[str], what: str) -> None:
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        key = what if what == "python" else " ".join(what.split()[:2])
        missing = [p for p in PRODUCES.get(key, []) if not (work / p).is_file()]
        assert not missing, f"{what} did not write {missing}"
        ran.append(key)

    for language, body in blocks((ROOT / "README.md").read_text()):
        if language == "python":
            script = work / "snippet.py"
            script.write_text(quick_python(body))
            run([sys.executable, str(script)], "python")
            continue
        for line in bash_commands(body):
            reason = next((why for prefix, why in SKIPPED.items() if line.startswith(prefix)), None)
            if reason:
                skipped.append(line)
                continue
            argv = quick_bash(line)
            assert argv[0] == "obliviate", f"a README line the test does not know how to run: {line}"
            run([sys.executable, "-m", "obliviate.cli", *argv[1:]], line)

    assert ran == [
        "obliviate toy",
        "obliviate track",
        "python",
        "obliviate erase",
        "obliviate report",
        "obliviate bench",
    ]
    # Each skip names exactly one README line: the list cannot silently grow to cover new lines.
    assert sorted(next(p for p in SKIPPED if line.startswith(p)) for line in skipped) == sorted(SKIPPED)
    report = json.loads((work / "runs/erased/erasure_report.json").read_text())
    assert report["config"]["gate"] == "default" and report["gate_decisions"]  # the README's erase is gated
    assert report["thresholds"]["control_groups"]  # judged against never-trained controls of each group
