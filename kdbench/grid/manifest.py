"""Submission manifests: which Slurm job (array id, index, submitit folder) runs which kdbench run."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from kdbench.tracking.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"


class ManifestEntry(BaseModel):
    """One run submitted as one Slurm job or array task."""

    run_id: str
    stage: str
    job_id: str = Field(description="'<array job id>_<index>', or a plain job id for a one-run submission")
    array_job_id: str
    array_index: int | None
    depends_on: str | None = None


class Manifest(BaseModel):
    """Everything one `kdbench run --executor slurm` submitted."""

    grid: str
    submitted_at: str = Field(description="UTC ISO time; sacct queries start here (job ids restart on a new cluster)")
    folder: str = Field(description="the submitit folder: sbatch files, pickles, stdout/stderr of each task")
    entries: list[ManifestEntry] = Field(default_factory=list)


def slurm_root(grid_dir: Path) -> Path:
    """results/<grid>/slurm: one sub-folder per submission."""
    return grid_dir / "slurm"


def write_manifest(submission_dir: Path, manifest: Manifest) -> None:
    """Write (or rewrite, after each array) the submission's manifest atomically."""
    atomic_write_json(submission_dir / MANIFEST_NAME, manifest.model_dump(mode="json"))


def read_manifests(grid_dir: Path) -> list[Manifest]:
    """Every manifest of the grid, oldest submission first (parsed again only when a file changed: `--wait` reads
    them at every poll, and a 10,000-run manifest takes a while to validate)."""
    manifests = []
    for path in sorted(slurm_root(grid_dir).glob(f"*/{MANIFEST_NAME}")):
        st = path.stat()
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = _parsed.get(str(path))
        if known is None or known[0] != version:
            known = _parsed[str(path)] = (version, Manifest.model_validate(json.loads(path.read_text())))
        manifests.append(known[1])
    return sorted(manifests, key=lambda m: m.submitted_at)


_parsed: dict[str, tuple[tuple[int, int, int], Manifest]] = {}


def latest_entries(manifests: list[Manifest]) -> dict[str, tuple[Manifest, ManifestEntry]]:
    """For each run id, its most recent submission."""
    latest: dict[str, tuple[Manifest, ManifestEntry]] = {}
    for manifest in manifests:
        for entry in manifest.entries:
            latest[entry.run_id] = (manifest, entry)
    return latest
