"""Lightning callbacks, one job each; they write to the run through its ``RunRecorder``."""

from edgeqat.callbacks.checkpoint_artifacts import CheckpointArtifacts
from edgeqat.callbacks.dataset_stats import DatasetStats
from edgeqat.callbacks.preemption_checkpoint import PreemptionCheckpoint
from edgeqat.callbacks.resume_checkpoint import ResumeCheckpoint
from edgeqat.callbacks.training_status import TrainingStatus

__all__ = ["CheckpointArtifacts", "DatasetStats", "PreemptionCheckpoint", "ResumeCheckpoint", "TrainingStatus"]
