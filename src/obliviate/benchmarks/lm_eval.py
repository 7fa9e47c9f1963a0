"""``lm_eval``: lm-evaluation-harness tasks on the in-memory model (optional extra ``obliviate[lm-eval]``).

    pip install 'obliviate[lm-eval]'      # = lm-eval[hf]: since late 2025 plain lm-eval brings no torch/transformers
    obliviate bench --model runs/toy/base --config suite.yaml --out runs/toy/utility

with ``suite.yaml`` holding ``benchmarks: [{name: lm_eval, tasks: [my_task], data: path/to/task_yamls}]``.
``data`` is lm-eval's ``include_path``: a folder (or one YAML file) of task configs, e.g. a task on
a local JSONL with ``dataset_path: json`` and ``dataset_kwargs: {data_files: {test: file.jsonl}}``.
The model is wrapped with ``HFLM(pretrained=model, tokenizer=tokenizer)``, so the weights being
erased are the ones evaluated (nothing is reloaded from disk). Scores are the tasks' metrics:
``acc``, ``acc_norm``, ... for one task, ``<task>/<metric>`` for several; a filter other than
``none`` is appended as ``<metric>,<filter>``. Directions come from lm-eval's ``higher_is_better``.

Works with lm-eval 0.4.x (>= 0.4.10, the first to import under transformers 5) and 0.5. What ``HFLM``
does with an in-memory model, read from its source: it keeps the object (no copy, no reload, its
device is the model's), calls ``model.eval()`` and ``tie_weights()`` once, and gives a tokenizer
without a pad token one (unk, else eos, else a *new* ``<|pad|>`` token the model has no embedding
for). So the tokenizer gets obliviate's pad token first (eos), and one wrapper is kept per model
object: the weights it reads are updated in place between gate checks.
"""

from __future__ import annotations

import importlib.util
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.benchmarks.base import BenchmarkConfig, BenchmarkError, UtilityBenchmark
from obliviate.benchmarks.registry import register_benchmark
from obliviate.config import nearest
from obliviate.data.probes import ensure_pad_token

INSTALL_HINT = "pip install 'obliviate[lm-eval]' (i.e. 'lm-eval[hf]>=0.4.10'; plain lm-eval lacks the HF backend)"
_TASK_MANAGERS: dict[tuple[str | None, bool], object] = {}


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


@dataclass
class LmEvalConfig(BenchmarkConfig):
    """Options of the ``lm_eval`` benchmark (``data`` is lm-eval's ``include_path``, optional)."""

    tasks: list = field(default_factory=list, metadata={"help": "lm-eval task or group names."})
    num_fewshot: int | None = field(default=None, metadata={"help": "few-shot examples (default: each task's own)."})
    limit: float | None = field(default=None, metadata={"help": "examples per task (an int) or a fraction (< 1)."})
    metrics: list | None = field(default=None, metadata={"help": "keep only these metric names (default: all)."})
    score: str | None = field(
        default=None,
        metadata={"help": "the score a gate tolerance applies to by default (default: the first one reported)."},
    )
    include_defaults: bool | None = field(
        default=None,
        metadata={"help": "index lm-eval's built-in tasks too (default: only when a task is not in data)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if not self.tasks:
            raise ValueError("lm_eval needs `tasks:`, a list of lm-eval task names.")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be > 0, got {self.limit}")


def task_manager(include_path: str | None, include_defaults: bool):
    """A cached lm-eval ``TaskManager`` (indexing every built-in task takes seconds)."""
    key = (include_path, include_defaults)
    if key not in _TASK_MANAGERS:
        from lm_eval.tasks import TaskManager

        _TASK_MANAGERS[key] = TaskManager(include_path=include_path, include_defaults=include_defaults)
    return _TASK_MANAGERS[key]


@register_benchmark("lm_eval")
class LmEval(UtilityBenchmark):
    """lm-evaluation-harness tasks via ``HFLM`` + ``simple_evaluate``; needs the ``lm-eval`` extra."""

    config_class = LmEvalConfig
    config: LmEvalConfig

    def load(self) -> None:
        if not lm_eval_available():
            raise BenchmarkError(f"the lm_eval benchmark needs lm-evaluation-harness: {INSTALL_HINT}.")
        include_path = None
        if self.config.data is not None:
            path = Path(self.config.data)
            if not path.exists():
                raise FileNotFoundError(
                    f"lm_eval include path {path} does not exist (a folder or YAML file of "
                    f"lm-eval task configs; relative paths start at {Path.cwd()})."
                )
            include_path = str(path.resolve())
        include_defaults = self.config.include_defaults
        if include_defaults is None:
            local = task_manager(include_path, False) if include_path else None
            include_defaults = local is None or any(t not in local.all_tasks for t in self.config.tasks)
        self.task_manager = task_manager(include_path, include_defaults)
        known = self.task_manager.all_tasks
        for name in self.config.tasks:
            if name not in known:
                raise BenchmarkError(
                    f"unknown lm-eval task {name!r}.{nearest(name, known)} Local tasks come from "
                    f"the YAML files under `data:` ({include_path}); each needs a `task:` name."
                )
        self._directions: dict[str, str] = {}
        self._outputs: list[str] = []

    def direction(self, score: str) -> str | None:
        return self._directions.get(score)

    @property
    def primary_score(self) -> str | None:
        return self.config.score or (self._outputs[0] if self._outputs else None)

    def compute(self, model, tokenizer) -> dict[str, float]:
        from lm_eval import simple_evaluate

        lm = self._wrap(model, tokenizer)
        limit = self.config.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        # Seeds left alone (None): the gate runs inside an erasure loop whose RNG must not be reset.
        output = simple_evaluate(
            model=lm,
            tasks=list(self.config.tasks),
            task_manager=self.task_manager,
            num_fewshot=self.config.num_fewshot,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            fewshot_random_seed=1234,
        )
        return self._flatten(output)

    def _wrap(self, model, tokenizer):
        """lm-eval's ``HFLM`` around this very model object (built once per model and tokenizer)."""
        cached = getattr(self, "_lm", None)
        if cached is not None and cached[0] is model and cached[1] is tokenizer:
            return cached[2]
        try:
            from lm_eval.models.huggingface import HFLM
        except ImportError as e:  # lm-eval without its hf extra (no torch/transformers backend)
            raise BenchmarkError(f"lm-eval's HF backend does not import ({e}): {INSTALL_HINT}.") from None
        ensure_pad_token(tokenizer)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.config.batch_size)
        self._lm = (model, tokenizer, lm)
        return lm

    def _flatten(self, output: dict) -> dict[str, float]:
        results, better = output["results"], output.get("higher_is_better", {})
        scores: dict[str, float] = {}
        for task, values in results.items():
            for key, value in values.items():
                metric, _, filt = key.partition(",")
                if (
                    not filt
                    or metric.endswith("_stderr")
                    or isinstance(value, bool)
                    or not isinstance(value, numbers.Real)
                ):
                    continue
                if self.config.metrics is not None and metric not in self.config.metrics:
                    continue
                name = metric if filt == "none" else f"{metric},{filt}"
                if len(results) > 1:
                    name = f"{task}/{name}"
                scores[name] = float(value)
                self._directions[name] = "higher" if better.get(task, {}).get(metric, True) else "lower"
        if not scores:
            raise BenchmarkError(
                f"lm-eval returned no numeric metric for {self.config.tasks} (metrics filter: {self.config.metrics})."
            )
        self._outputs = list(scores)
        return scores
