"""One job of a sweep, as Hydra's launcher runs it: ``train`` into a child run of the sweep's parent.

The wiring is in the job's own config (``tracking.parent_run_id``, ``tracking.tracking_uri``,
``sweep.swept_keys``), which every launcher composes and ships with the job: the basic launcher
in this process, joblib in worker processes, submitit on SLURM nodes, Ray on other machines.
Nothing rides on environment variables, a shared working directory or return values, which not
every launcher carries.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from edgeqat.config import register_configs
from edgeqat.sweep.plan import override_key

log = logging.getLogger(__name__)

JOB_TAG = "edgeqat.sweep.job"  # the job's number in the sweep
OVERRIDES_TAG = "edgeqat.sweep.overrides"  # its swept values, e.g. "model=resnet18 quant=qat_int8"
# overrides the sweep adds (the wiring), left out of the child's logged overrides; the config has them
SET_BY_SWEEP = ("tracking.parent_run_id", "tracking.tracking_uri", "sweep.swept_keys")

# A launcher's worker process composes the job's config from the schema in its own ConfigStore.
register_configs()


def sweep_job(cfg: DictConfig) -> dict[str, Any]:
    """Train one job; its failure is recorded on its child run and returned, never raised.

    Hydra's sweeper re-raises a failed job's exception once its batch is done, which would end the
    sweep and skip the parent's summary: here a failure is the child's status (FAILED, with its
    reason), and the parent decides what the sweep's status is.
    """
    from hydra.core.hydra_config import HydraConfig

    from edgeqat.train import train

    hydra = HydraConfig.get()
    overrides = [o for o in hydra.overrides.task if override_key(o) not in SET_BY_SWEEP]
    label = " ".join(o for o in overrides if override_key(o) in cfg.sweep.swept_keys) or "the only job"
    tags = {JOB_TAG: str(hydra.job.num), OVERRIDES_TAG: label}
    with read_write(cfg), open_dict(cfg):
        cfg.tracking.tags = {**cfg.tracking.tags, **tags}
        cfg.tracking.run_name = cfg.tracking.run_name or label
        OmegaConf.resolve(cfg)  # as compose_config does for a single job
    try:
        result = train(cfg, overrides)
    except Exception as e:  # noqa: BLE001 - any failure is this child's, and the sweep goes on
        from edgeqat.tracking.run import failure_line

        log.error("sweep job %s (%s) failed: %s", hydra.job.num, label, failure_line(e))
        return {"job": hydra.job.num, "status": "FAILED", "run_id": _record_failure(cfg, tags, e),
                "failure": failure_line(e)}
    return {"job": hydra.job.num, "status": "FINISHED", "run_id": result.run_id}


def _record_failure(cfg: DictConfig, tags: dict[str, str], error: Exception) -> str | None:
    """The child run of a job that failed: the one ``train`` opened, or, if it failed before, a FAILED one."""
    from mlflow.tracking import MlflowClient

    from edgeqat.tracking.run import FAILURE_TAG, PARENT_TAG, STATUS_TAG, failure_line, resolve_tracking_uri
    from edgeqat.tracking.secrets import scrub_secrets
    from edgeqat.tracking.summary import NOTE_TAG, end_note

    parent = cfg.tracking.parent_run_id
    try:
        client = MlflowClient(resolve_tracking_uri(cfg.tracking.tracking_uri))
        experiment_id = client.get_run(parent).info.experiment_id
        found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent}' and "
                                                    f"tags.`{JOB_TAG}` = '{tags[JOB_TAG]}'")
        if found:
            return found[0].info.run_id
        reason = scrub_secrets(failure_line(error))
        run = client.create_run(experiment_id, run_name=cfg.tracking.run_name, tags={
            **scrub_secrets(dict(cfg.tracking.tags)), PARENT_TAG: parent, STATUS_TAG: "FAILED", FAILURE_TAG: reason,
            NOTE_TAG: end_note("FAILED", reason)})
        client.set_terminated(run.info.run_id, "FAILED")
        return run.info.run_id
    except Exception as e:  # noqa: BLE001 - the server may be what failed; the parent counts a missing child
        log.error("sweep job %s: could not record its failure in MLflow: %s", tags[JOB_TAG], e)
        return None
