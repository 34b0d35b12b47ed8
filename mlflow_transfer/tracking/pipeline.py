"""``main``: the source→target pipeline — source run (reused when an identical one finished before),
target run, and optionally the pair's diagnostics and its timeline (issue 14) — nested under one
``pipeline`` run.

The one place that calls both the training runs (`runs`) and `diagnose`, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import mlflow

from ..config import Recipe, parse_methods
from ..errors import NoTimelineError
from ..runtime import resolve_device
from ..tags import TAGS
from .context import pair_id, prepare_data, transfer_run
from .diagnose import diagnose
from .runs import finetune, find_reusable_source, train_source
from .timetravel import timetravel

log = logging.getLogger(__name__)

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass(frozen=True)
class PipelineResult:
    pipeline_run_id: str
    source_run_id: str
    target_run_id: str
    source_reused: bool
    pair_id: str
    diagnostics_run_id: str | None = None
    # issue 13, `main --methods`: method → (target run id, diagnostics run id or None), in the order given;
    # the fields above are the first method's
    method_runs: dict | None = None


def run_pipeline(recipe: Recipe, *, diagnose_options=None, report_writer=None,
                 trust_pickled: bool = False, methods: str | tuple[str, ...] | None = None,
                 timetravel_args: dict | None = None) -> PipelineResult:
    """``main``: source run (reused when an identical one finished before), then the target run.

    Both are nested under a ``pipeline`` run (the one ``mlflow run`` created, when it did). With
    ``diagnose_options`` (a `DiagnoseOptions`), the pair is diagnosed right after (its
    ``sample_per_class`` instances per class, domain and split), and ``report_writer`` (see `diagnose`) adds its
    ``report.html``. ``trust_pickled``: allow pickled logged models (see `load_model_weights`).
    ``methods`` (issue 13, ``("finetune", "slice", "scratch")`` or that text comma-separated): one target run
    (and diagnosis) per transfer method, the recipe's ``target.method`` replaced by each, all from the one
    source run; checked before any run opens. Empty: the recipe's method alone. ``timetravel_args`` (with
    ``diagnose_options``): each diagnosed pair gets its timeline right after (`timetravel`, given these
    keyword arguments, e.g. ``sample_per_class`` and ``options``; ``{}``: its defaults); None: no timeline.
    """
    if methods:
        text = methods if isinstance(methods, str) else ",".join(methods)
        return _run_methods(recipe, parse_methods(text), diagnose_options=diagnose_options,
                            report_writer=report_writer, trust_pickled=trust_pickled,
                            timetravel_args=timetravel_args)
    resolve_device(recipe.runtime.device)  # an absent device fails before any run opens
    data = prepare_data(recipe)
    with transfer_run("pipeline", recipe, nested=False, name=f"{recipe.name}-pipeline") as parent:
        reused = find_reusable_source(recipe, parent.info.experiment_id)
        source_id = reused or train_source(recipe, data=data, nested=True)
        mlflow.set_tag(TAGS.source_run_id, source_id)
        target_id = finetune(recipe, source_id, data=data, nested=True, trust_pickled=trust_pickled)
        pid = pair_id(recipe, source_id, target_id)
        mlflow.set_tags({TAGS.pair_id: pid, TAGS.target_run_id: target_id,
                         TAGS.source_reused: str(bool(reused)).lower()})
        diag_id = None
        if diagnose_options is not None:
            diag_id = diagnose(target_run_id=target_id, recipe=recipe, options=diagnose_options,
                               nested=True, report_writer=report_writer,
                               trust_pickled=trust_pickled, device=recipe.runtime.device)
            mlflow.set_tag(TAGS.diagnostics_run_id, diag_id)
            _timeline(target_id, diag_id, recipe, report_writer, trust_pickled, timetravel_args)
        return PipelineResult(parent.info.run_id, source_id, target_id, bool(reused), pid, diag_id)


def _timeline(target_id: str, diag_id: str, recipe: Recipe, report_writer, trust_pickled: bool,
              timetravel_args: dict | None) -> None:
    """The diagnosed pair's timeline (issue 14), when asked for, on its diagnostics run. A pair whose
    training has none to draw (one epoch, an imported model without checkpoints) is said, not a failure:
    the timeline is one lens of a pipeline that has already landed its runs and bundle."""
    if timetravel_args is None:
        return
    try:
        timetravel(target_run_id=target_id, diagnostics_run_id=diag_id, report_writer=report_writer,
                   trust_pickled=trust_pickled, device=recipe.runtime.device, **timetravel_args)
    except NoTimelineError as exc:
        log.warning("no training timeline for this pair: %s", exc)


def _run_methods(recipe: Recipe, methods: tuple[str, ...], *, diagnose_options, report_writer,
                 trust_pickled: bool, timetravel_args: dict | None) -> PipelineResult:
    """`run_pipeline` for several transfer methods: the source once, then per method a target run and its
    diagnosis, nested under one pipeline run tagged `TAGS.method_runs`."""
    resolve_device(recipe.runtime.device)
    data = prepare_data(recipe)
    with transfer_run("pipeline", recipe, nested=False, name=f"{recipe.name}-pipeline") as parent:
        reused = find_reusable_source(recipe, parent.info.experiment_id)
        source_id = reused or train_source(recipe, data=data, nested=True)
        mlflow.set_tags({TAGS.source_run_id: source_id, TAGS.source_reused: str(bool(reused)).lower()})
        runs: dict[str, tuple[str, str | None]] = {}
        for method in methods:
            one = dataclasses.replace(recipe, target=dataclasses.replace(recipe.target, method=method))
            target_id = finetune(one, source_id, data=data, nested=True, trust_pickled=trust_pickled)
            diag_id = None
            if diagnose_options is not None:
                diag_id = diagnose(target_run_id=target_id, recipe=one, options=diagnose_options, nested=True,
                                   report_writer=report_writer, trust_pickled=trust_pickled,
                                   device=recipe.runtime.device)
                _timeline(target_id, diag_id, one, report_writer, trust_pickled, timetravel_args)
            runs[method] = (target_id, diag_id)
            mlflow.set_tag(TAGS.method_runs, json.dumps({m: t for m, (t, _) in runs.items()}))
        target_id, diag_id = next(iter(runs.values()))
        pid = pair_id(recipe, source_id, target_id)
        mlflow.set_tags({TAGS.pair_id: pid, TAGS.target_run_id: target_id})
        if diag_id:
            mlflow.set_tag(TAGS.diagnostics_run_id, diag_id)
        return PipelineResult(parent.info.run_id, source_id, target_id, bool(reused), pid, diag_id, runs)
