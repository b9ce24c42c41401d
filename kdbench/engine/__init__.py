"""Training: one train_run for teachers and students, evaluation, checkpoints, seeding."""

from kdbench.engine.run import RunBusy, RunJob, RunObserver, TeacherError, load_teacher, train_run

__all__ = ["RunBusy", "RunJob", "RunObserver", "TeacherError", "load_teacher", "train_run"]
