"""The end-to-end demo: tiny model -> SFT with tracking -> flag -> erase under the gate -> report.

    obliviate demo --out runs/demo            # what `make demo` runs (recipes/demo.yaml)
    obliviate demo --quick --out /tmp/demo    # the reduced run the tests use

Stages, each timed and written under OUT/ (:mod:`obliviate.demo.run`):
  toy/      the built-in base model and corpus (reused from OUT/toy or ~/.cache/obliviate: ``toycache``)
  track/    TRL SFTTrainer + MemorizationCallback (`run_track`): history, flagged.jsonl, the fine-tuned model
  data/     retain.jsonl without the flagged rows, controls.jsonl (the never-trained control probes)
  erase/    EMSO under the utility gate (`run_erase`): erased model, erasure_report.json
  scores_{before,after}.jsonl, utility_{before,after}.json, timings.json, report.md, report.html, plots/
  demo.json and the closing tables (:mod:`obliviate.demo.summary`)

The recipe and its checks are :mod:`obliviate.demo.recipe`. Importing this package loads no torch, so a
recipe error is reported within the first second.
"""

from obliviate.demo.recipe import SECTIONS, DemoError, DemoSettings, default_recipe, load_demo_recipe
from obliviate.demo.run import MARKER, run_demo
from obliviate.demo.summary import summary_record, summary_text
from obliviate.demo.toycache import cache_root, prepare_toy, toy_key

__all__ = [
    "MARKER",
    "SECTIONS",
    "DemoError",
    "DemoSettings",
    "cache_root",
    "default_recipe",
    "load_demo_recipe",
    "prepare_toy",
    "run_demo",
    "summary_record",
    "summary_text",
    "toy_key",
]
