"""The report's configuration and provenance section, from the records of the finished runs a report shows.

One table per topic: the recipe as run (with the lr after scaling and the lr of every epoch range), each method
label's hyper-parameters as run (resolved; one row per setting when a label's runs disagree), the teachers
(accuracy and weights checksum), the data, and the code and environment (commit, code digests, package versions,
device, dates). A value that older records lack reads 'not recorded'. ``provenance.json`` holds the same tables
unabbreviated and one entry per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdbench.numfmt import clean_float
from kdbench.report.provenance_text import (
    NOT_RECORDED,
    VERSION_ORDER,
    dataset_text,
    duration,
    effective_lr,
    params_text,
    recipe_cells,
    runs_word,
    short_commit,
    short_sha,
    tally,
    version_text,
    when,
)
from kdbench.report.render import markdown
from kdbench.report.tables import Table, _method_key
from kdbench.tracking.record import RECORD_NAME, RunRecord, TeacherInfo

SECTION = "Configuration and provenance"
PROVENANCE_NAME = "provenance.json"


class _Top1(BaseModel):
    model_config = ConfigDict(extra="ignore")

    top1: float


class RecordView(BaseModel):
    """The parts of a record.json this section reads (the per-epoch history and counts are skipped)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    grid: str
    status: str
    stage: str
    method: str
    label: str
    arch: str
    pair: str
    dataset: str
    seed: int
    subset_seed: int = 0
    spec: dict[str, Any] = Field(default_factory=dict)
    code: dict[str, str] = Field(default_factory=dict)
    num_classes: int | None = None
    class_counts: list[int] = Field(default_factory=list)
    final: _Top1 | None = None
    teacher: TeacherInfo | None = None
    model_sha256: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


Run = RunRecord | RecordView


def read_views(runs_root: str | Path, run_ids: Iterable[str]) -> list[RecordView]:
    """The views of the records of ``run_ids`` under ``runs_root`` (one that cannot be read is left out: the
    report's own loading has already set such records aside)."""
    views = []
    for run_id in sorted(set(run_ids)):
        try:
            views.append(RecordView.model_validate_json((Path(runs_root) / run_id / RECORD_NAME).read_bytes()))
        except (OSError, ValidationError):
            continue
    return views


def _grids(runs: Sequence[Run]) -> list[str]:
    """The grids of ``runs`` in the report's order (the first grid's runs come first)."""
    return list(dict.fromkeys(run.grid for run in runs))


# --- the recipe ----------------------------------------------------------------------------------------------------

def _group_labels(groups: dict[str, list[Run]], several_grids: bool) -> dict[str, str]:
    """A column heading per recipe: who ran it, with as much detail as tells the recipes apart."""
    def describe(runs: list[Run], detail: int) -> str:
        stages = sorted({run.stage for run in runs}, reverse=True)  # teacher before student
        text = " and ".join(f"{stage}s" for stage in stages)
        if detail >= 1:
            text += ": " + ", ".join(sorted({run.label for run in runs}))
        if detail >= 2:
            text += " on " + ", ".join(sorted({run.dataset for run in runs}))
        if detail >= 3:
            text += " · " + ", ".join(sorted({run.pair for run in runs}))
        if several_grids:
            text = f"{runs[0].grid}: {text}"
        return f"{text} ({runs_word(len(runs))})"

    for detail in range(4):
        labels = {key: describe(runs, detail) for key, runs in groups.items()}
        if len(set(labels.values())) == len(labels):
            return labels
    return {key: f"{label} [recipe {i + 1}]" for i, (key, label) in enumerate(labels.items())}


def recipe_table(runs: Sequence[Run]) -> Table:
    """Settings × recipes: one column per distinct recipe of the runs (teachers and students apart)."""
    several = len(_grids(runs)) > 1
    groups: dict[str, list[Run]] = {}
    for run in runs:
        recipe = run.spec.get("recipe")
        key = json.dumps([run.grid if several else "", recipe], sort_keys=True)
        groups.setdefault(key, []).append(run)
    labels = _group_labels(groups, several)
    columns = {labels[key]: recipe_cells(json.loads(key)[1]) for key in groups}
    settings = list(dict.fromkeys(name for cells in columns.values() for name in cells))
    display = pd.DataFrame({"setting": settings,
                            **{label: [cells.get(s, "—") for s in settings] for label, cells in columns.items()}})
    data = pd.DataFrame([{"runs": labels[key], "count": len(members), **(json.loads(key)[1] or {}),
                          "effective_lr": _clean(effective_lr(json.loads(key)[1] or {}))}
                         for key, members in groups.items()])
    notes = ["the training recipe of each run as recorded in its spec; 'lr at epoch 1' is after lr scaling, and the "
             "schedule gives the lr of each stretch of epochs (step decay after each milestone epoch)"]
    return Table("config_recipe", "Training recipe", data, display, notes)


# --- methods -------------------------------------------------------------------------------------------------------

def _where(runs: list[Run]) -> str:
    cells = sorted({f"{run.dataset} {run.pair}" for run in runs})
    return "; ".join(cells[:4]) + (f"; … ({len(cells) - 4} more)" if len(cells) > 4 else "")


def methods_table(runs: Sequence[Run]) -> Table:
    """One row per method label and hyper-parameter setting, as run (resolved, defaults included)."""
    several = len(_grids(runs)) > 1
    by_label: dict[tuple[str, str], dict[str, list[Run]]] = {}
    for run in runs:
        params = run.spec.get("params") if "params" in run.spec else None
        by_label.setdefault((run.grid, run.label), {}).setdefault(json.dumps(params, sort_keys=True), []).append(run)
    rows, cells = [], []
    grids = _grids(runs)
    order = sorted(by_label, key=lambda key: (grids.index(key[0]), _method_key(key[1])))
    for grid, label in order:
        settings = by_label[(grid, label)]
        for key, members in settings.items():
            params = json.loads(key)
            method = tally([run.method for run in members], str)
            code = tally([run.code.get("method") for run in members], short_sha)
            rows.append({"grid": grid, "label": label, "method": method, "params": params, "runs": len(members),
                         "settings": len(settings), "where": _where(members),
                         "method_code_sha256": sorted({run.code.get("method") or "" for run in members})})
            cells.append({**({"grid": grid} if several else {}),
                          "method": label + (f" (⚠ {len(settings)} settings)" if len(settings) > 1 else ""),
                          "trained as": method, "hyper-parameters": params_text(params),
                          "runs": len(members), "where": _where(members) if len(settings) > 1 else "all its runs",
                          "method code sha256": code})
    notes = ["hyper-parameters as run: the method's defaults overlaid with the grid's values and overrides (resolved "
             "when the grid was expanded); a label whose runs disagree (per-pair or per-dataset overrides) has one "
             "row per setting, marked ⚠", "method code sha256: digest of the method's source files when the run "
             "was trained (kdbench.codeid)"]
    return Table("config_methods", "Method hyper-parameters", pd.DataFrame(rows), pd.DataFrame(cells), notes)


# --- teachers ------------------------------------------------------------------------------------------------------

def _weights_text(run: Run) -> str:
    weights = run.spec.get("weights")
    if not weights:
        return f"trained (seed {run.seed})"
    if weights.get("source") == "pretrained":
        origin = (run.provenance.get("weights") or {}).get("origin")
        return "pretrained" + (f" ({origin})" if origin else "")
    given = weights.get("sha256") or (run.provenance.get("weights") or {}).get("sha256")
    return f"given: {Path(weights['source']).name}" + (f" (sha256 {short_sha(given)})" if given else "")


def teachers_table(runs: Sequence[Run]) -> Table:
    """One row per teacher run: dataset, architecture, weights, test top-1, checksum, and the students using it."""
    several = len(_grids(runs)) > 1
    teachers = {(run.grid, run.run_id): run for run in runs if run.stage == "teacher"}
    used: dict[tuple[str, str], list[tuple[Run, TeacherInfo]]] = {}
    for run in runs:
        if run.teacher is not None:
            used.setdefault((run.grid, run.teacher.run_id), []).append((run, run.teacher))
    rows, cells = [], []
    grids = _grids(runs)
    for key in set(teachers) | set(used):
        record, students = teachers.get(key), used.get(key, [])
        infos = [info for _, info in students]
        if record is not None:
            dataset, arch, seed = record.dataset, record.arch, record.seed
            top1 = record.final.top1 if record.final is not None else None
            digest = record.model_sha256 or (record.spec.get("weights") or {}).get("sha256")
            weights = _weights_text(record)
        else:  # the teacher's own record is not in this report: what its students recorded of it
            dataset, arch, seed = students[0][0].dataset, infos[0].arch, None
            top1, digest = infos[0].top1, infos[0].sha256
            weights = "its record is not in this report (from its students' records)"
        # students record the checksum of the teacher's model.pt (a given file's own checksum is another file's)
        loaded = record.model_sha256 if record is not None else digest
        mismatched = [info for info in infos if loaded and info.sha256 != loaded]
        if not infos:
            check = "none in this report"
        elif not loaded:
            check = f"{runs_word(len(infos))}, not compared (the teacher's model checksum is {NOT_RECORDED})"
        elif mismatched:
            check = (f"{runs_word(len(infos))}, {len(mismatched)} used other weights "
                     f"(sha256 {short_sha(mismatched[0].sha256)})")
        else:
            check = f"{runs_word(len(infos))}, checksum matches"
        rows.append({"grid": key[0], "dataset": dataset, "teacher": arch, "run_id": key[1], "seed": seed,
                     "weights": weights, "top1": top1, "sha256": digest, "students": len(infos),
                     "students_other_weights": len(mismatched)})
        cells.append({**({"grid": key[0]} if several else {}), "dataset": dataset, "teacher": arch,
                      "run id": key[1], "weights": weights,
                      "test top-1 (%)": f"{top1:.2f}" if top1 is not None else NOT_RECORDED,
                      "sha256": short_sha(digest), "students": check})
    order = sorted(range(len(rows)),
                   key=lambda i: (grids.index(rows[i]["grid"]), rows[i]["dataset"], rows[i]["run_id"]))
    rows, cells = [rows[i] for i in order], [cells[i] for i in order]
    notes = ["test top-1: the teacher's final-epoch test accuracy; sha256: its model.pt as recorded when it ended "
             "(the given weights' checksum when it was given and no model file was recorded); students: the runs "
             "of this report that distilled from it, and whether the checksum they recorded matches"]
    return Table("config_teachers", "Teachers", pd.DataFrame(rows), pd.DataFrame(cells), notes)


# --- data ----------------------------------------------------------------------------------------------------------

def data_table(runs: Sequence[Run]) -> Table:
    """One row per dataset variant: source, classes, training images, validation split, subset seed."""
    several = len(_grids(runs)) > 1
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.grid, run.dataset), []).append(run)
    rows, cells = [], []
    grids = _grids(runs)
    for (grid, variant), members in sorted(groups.items(), key=lambda item: (grids.index(item[0][0]), item[0][1])):
        sources = [dataset_text(run.spec) for run in members]
        images = [sum(run.class_counts) if run.class_counts else None for run in members]
        subset_digests = [run.provenance.get("train_source_indices_sha256") for run in members]
        rows.append({"grid": grid, "dataset": variant, "source": sources[0][0], "validation": sources[0][1],
                     "classes": sorted({run.num_classes for run in members if run.num_classes is not None}),
                     "train_images": sorted({n for n in images if n is not None}),
                     "subset_seed": sorted({run.subset_seed for run in members}),
                     "train_subset_sha256": sorted({d for d in subset_digests if d})})
        cells.append({**({"grid": grid} if several else {}), "dataset": variant,
                      "source": tally([s for s, _ in sources], str), "validation": tally([v for _, v in sources], str),
                      "classes": tally([run.num_classes for run in members]), "train images": tally(images),
                      "subset seed": tally([run.subset_seed for run in members]),
                      "train subset": tally(subset_digests, str), "runs": len(members)})
    notes = ["train images: the run's training set after any long-tail subsampling and validation split; train "
             "subset: digest of the training images' source indices (equal digests, equal training sets)"]
    return Table("config_data", "Data", pd.DataFrame(rows), pd.DataFrame(cells), notes)


# --- code and environment ------------------------------------------------------------------------------------------

def _environment_cells(runs: Sequence[Run]) -> dict[str, str]:
    prov = [run.provenance for run in runs]
    recorded = [p for p in prov if p.get("versions") is not None]  # written by the engine when the run ended
    cells = {"runs": str(len(runs)),
             "git commit": tally([p.get("git_commit") for p in prov], lambda c: short_commit(str(c))),
             "training code sha256": tally([run.code.get("training") for run in runs], short_sha)}
    names = {name for p in prov for name in (p.get("versions") or {})}
    for name in [*[n for n in VERSION_ORDER if n in names], *sorted(names - set(VERSION_ORDER))] or VERSION_ORDER:
        cells[name] = tally([version_text(p.get("versions"), name) for p in prov], str)
    devices = [None if "device" not in p else p["device"] + (f" ({p['device_name']})" if p.get("device_name")
                                                           not in (None, p["device"]) else "") for p in prov]
    cells["device"] = tally(devices, str)
    cells["host"] = tally([p.get("hostname") for p in prov], str)
    cells["CPU threads"] = tally([p.get("threads") for p in prov])
    cells["processes per run"] = tally([p.get("world_size", 1) if p.get("versions") is not None else None
                                        for p in prov])
    jobs = {p.get("slurm_job_id") for p in prov if p.get("slurm_job_id")}
    cells["Slurm jobs"] = (f"{len(jobs)}" if jobs else "none") if recorded else NOT_RECORDED
    starts = sorted(p["started_at"] for p in prov if p.get("started_at"))
    ends = sorted(p["finished_at"] for p in prov if p.get("finished_at"))
    missing = sum(1 for p in prov if not p.get("started_at"))
    suffix = f" ({runs_word(missing)}: {NOT_RECORDED})" if missing and starts else ""
    cells["first start"] = when(starts[0]) + suffix if starts else NOT_RECORDED
    cells["last end"] = when(ends[-1]) + suffix if ends else NOT_RECORDED
    seconds = [p["train_seconds"] for p in prov if isinstance(p.get("train_seconds"), (int, float))]
    cells["training time"] = (f"{duration(sum(seconds))} over {runs_word(len(seconds))}" if seconds
                              else NOT_RECORDED)
    resumed = [p for p in prov if p.get("resumed_after_epochs")]
    cells["resumed runs"] = (f"{len(resumed)} of {len(recorded)}" if resumed else "none") if recorded \
        else NOT_RECORDED
    return cells


def environment_table(runs: Sequence[Run]) -> Table:
    """Settings × grids: commit, code digests, package versions, device, host, dates and training time."""
    columns = {grid: _environment_cells([run for run in runs if run.grid == grid]) for grid in _grids(runs)}
    settings = list(dict.fromkeys(name for cells in columns.values() for name in cells))
    heading = {grid: ("value" if len(columns) == 1 else grid) for grid in columns}
    display = pd.DataFrame({"setting": settings,
                            **{heading[g]: [cells.get(s, "—") for s in settings] for g, cells in columns.items()}})
    data = pd.DataFrame([{"grid": grid, **cells} for grid, cells in columns.items()])
    notes = ["git commit ('+dirty': the checkout had uncommitted changes) and package versions of the process that "
             "trained each run; training code sha256: digest of kdbench's engine, data, models and loss interface "
             "(kdbench.codeid); first start is the start of a run's last attempt (a resumed run started earlier)"]
    return Table("config_environment", "Code and environment", data, display, notes)


# --- the section -----------------------------------------------------------------------------------------------------

def provenance_tables(runs: Sequence[Run]) -> list[Table]:
    """The section's tables for ``runs`` (the finished runs a report shows); [] when there are none."""
    runs = [run for run in runs if run.status == "done"]
    if not runs:
        return []
    return [recipe_table(runs), methods_table(runs), teachers_table(runs), data_table(runs), environment_table(runs)]


def _clean(value: float | None) -> float | None:
    return clean_float(value) if value is not None else None


def _plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as JSON-ready dicts (missing values as None)."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{key: (None if isinstance(value, float) and value != value else value) for key, value in row.items()}
            for row in rows]


def run_entries(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One machine-readable entry per finished run: identity, spec parts, teacher, checksums and provenance."""
    entries = []
    for run in runs:
        if run.status != "done":
            continue
        entries.append({
            "run_id": run.run_id, "grid": run.grid, "stage": run.stage, "method": run.label,
            "method_name": run.method, "pair": run.pair, "dataset": run.dataset, "seed": run.seed,
            "recipe": run.spec.get("recipe"), "params": run.spec.get("params"), "weights": run.spec.get("weights"),
            "teacher": run.teacher.model_dump() if run.teacher is not None else None,
            "model_sha256": run.model_sha256, "code": run.code or None, "provenance": run.provenance or None,
        })
    return entries


def provenance_json(tables: Sequence[Table], entries: Sequence[dict[str, Any]]) -> str:
    """provenance.json: every table's data (whole digests) and the run entries (:func:`run_entries`)."""
    payload = {"tables": {table.name: _plain(table.data) for table in tables}, "runs": list(entries)}
    return json.dumps(payload, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


def section_markdown(tables: Sequence[Table]) -> str:
    """The section as markdown: a heading, then each table one level below the report's tables."""
    return "\n\n".join([f"## {SECTION}", *("#" + markdown(table) for table in tables)])


def report_provenance(sources: Sequence[tuple[str, Path | None, Iterable[str]]]
                      ) -> tuple[list[Table], list[dict[str, Any]], list[str]]:
    """(tables, run entries, skipped lines) of a report's sources, each (grid name, runs folder or None, the run
    ids the report shows). A source without a runs folder (read from MLflow) has no records to read: one skipped
    line says so."""
    views: list[RecordView] = []
    skipped = []
    for name, runs_root, run_ids in sources:
        if runs_root is None:
            skipped.append(f"configuration and provenance of '{name}': they come from the run records, and this "
                           "report was read from MLflow alone (report the results folder to see them)")
            continue
        views += read_views(runs_root, run_ids)
    tables = provenance_tables(views)
    return tables, run_entries(views) if tables else [], skipped
