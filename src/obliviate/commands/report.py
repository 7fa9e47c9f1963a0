"""``obliviate report RUN_DIR``: write report.md / report.html with plots for a run directory."""

from __future__ import annotations

DESCRIPTION = """Collect what a run wrote and explain it: memorization over training by repetition
count, the flagged sequences, the tail of extraction, membership-inference ROC, the erasure
trajectory with every gate decision, per-sequence before/after, utility and timings. Each part
appears only when its inputs exist, so RUN_DIR may be a demo, track, erase or score directory.

Writes RUN_DIR/report.md, RUN_DIR/report.html (self-contained: plots embedded, send it as one
file) and RUN_DIR/plots/*.png.

  obliviate report runs/demo
  obliviate report runs/track --out reports/track --title 'SFT run 12'"""


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output directory of obliviate demo|track|erase|score")
    parser.add_argument("--out", help="write the report here instead of into RUN_DIR")
    parser.add_argument("--title", help="report title (default: the run directory's name)")


def run(args) -> int:
    from obliviate.report import write_report

    html = write_report(args.run_dir, args.out, args.title)
    print(f"wrote {html.with_name('report.md')} and {html} (plots in {html.parent / 'plots'})")
    return 0
