"""``tools/train.py`` through Hydra: one run, a multirun sweep, or jobs on a SLURM cluster via submitit.

    tools/train.py --config configs/iresnet3d50_kinetics.yaml data.root=/data/k400 optim.lr=0.2
    tools/train.py --config configs/demo_synthetic.yaml -m optim.lr=0.001,0.002 model.name=a,b
    tools/train.py --config ... -m hydra/launcher=submitit_slurm hydra.launcher.nodes=2 ...

``--config FILE`` becomes Hydra's config path and name (the file's folder, and a primary config that puts
the typed schema under the file), ``--resume R`` becomes ``train.resume=R``; everything else is Hydra's
command line.  A single run writes into ``train.output_dir`` as before (Hydra's record of it in
``.hydra/``); a sweep gives every job a folder ``<output_dir>/multirun/<time>/<job number>`` and ends with
one table of the jobs' final metrics (``summary.csv`` beside them).

On a cluster (Hydra's submitit launcher) each SLURM task joins torch.distributed from SLURM's variables
(`adopt_slurm_tasks`), and a preempted or timed-out job checkpoints at the next step and requeues itself:
the requeued job resumes from that checkpoint, exactly (`Preemption`).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from iresvid.config import ConfigError, entry_node, from_composed, load_config, register_schema
from iresvid.errors import UserError
from iresvid.files import atomic_open, atomic_write, csv_cell

log = logging.getLogger("iresvid.launch")

_PRIMARY = "iresvid_train"  # the primary config `hydra.main` composes: the schema, then the user's file
RESULT_FILE = "result.json"  # a job's outcome, read back by the sweep's summary
SUMMARY_METRICS = (
    "epoch",
    "val_video_top1",
    "val_video_top5",
    "val_clip_top1",
    "val_video_mean_class_accuracy",
)
_HYDRA_SETTINGS = {
    "run": {"dir": "${train.output_dir}"},  # one run: the folder it always had
    "sweep": {"dir": "${train.output_dir}/multirun/${now:%Y-%m-%d_%H-%M-%S}", "subdir": "${hydra.job.num}"},
    "job": {"chdir": False},  # relative data paths keep meaning what they meant
    "callbacks": {"sweep_summary": {"_target_": f"{__name__}.SweepSummary"}},
}


def train_main(argv: Sequence[str]) -> int:
    """``tools/train.py`` / ``iresvid train``: exit status 0, 1 (a sweep's job failed) or 2 (a user error)."""
    import hydra

    config, resume, hydra_args = _split_arguments(argv)
    overrides = [a for a in hydra_args if not a.startswith("-")]
    overrides += [f"train.resume={resume}"] if resume else []
    multirun = any(a in ("-m", "--multirun") for a in hydra_args)
    check_overrides(config, overrides, multirun=multirun)  # every mistake as one line, before any job

    register_schema()
    from hydra.core.config_store import ConfigStore

    primary = entry_node(Path(config).stem)
    primary["defaults"] += [{"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}]
    primary.setdefault("hydra", {}).update(_HYDRA_SETTINGS)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun's other ranks: one record of the run is enough
        primary["hydra"]["output_subdir"] = None
    ConfigStore.instance().store(name=_PRIMARY, node=primary)
    flags = [a for a in hydra_args if a.startswith("-")]
    folder = Path(config).resolve().parent
    _outcome.clear()
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], f"--config-path={folder}", f"--config-name={_PRIMARY}", *flags, *overrides]
    try:
        hydra.main(config_path=None, config_name=None, version_base="1.3")(_job)()
    finally:
        sys.argv = saved_argv
    if "error" in _outcome:  # one run's exception, raised here rather than inside Hydra's reporting
        raise _outcome["error"]
    return 1 if _outcome.get("failed_jobs") else 0


def check_overrides(config: str, overrides: Sequence[str], *, multirun: bool) -> None:
    """Compose every run a command line asks for (each combination of a sweep): a misspelled key or a bad
    value is refused at once in one line, not once per job after the first ones ran."""
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    if not multirun:
        load_config(config, task)
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(task):
        key = override.get_key_element()
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        choices.append(
            [f"{key}={v}" for v in values] if override.value() is not None else [override.input_line]
        )
    for combination in itertools.islice(itertools.product(*choices), 256):
        load_config(config, list(combination))


def _split_arguments(argv: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """``--config FILE`` and ``--resume R`` out of a command line; the rest is Hydra's."""
    config = resume = None
    rest, args = [], list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--config", "--resume") and arg.startswith("--"):
            if not eq:
                if not args:
                    raise ConfigError(f"{name} needs a value")
                value = args.pop(0)
            config, resume = (value, resume) if name == "--config" else (config, value)
        else:
            rest.append(arg)
    if config is None:
        raise ConfigError("--config FILE is required (a YAML file, e.g. configs/iresnet3d50_kinetics.yaml)")
    return config, resume, rest


# ------------------------------------------------------------------------------------------- a job

_outcome: dict = {}  # what the jobs of this process left for `train_main`


def _job(composed: DictConfig) -> dict | None:
    """One Hydra job: the checked config, its folder, SLURM's tasks, preemption, then training."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from iresvid.cli import setup_logging
    from iresvid.engine.dist import adopt_slurm_tasks
    from iresvid.engine.parts import claim_run_folder

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    folder = None  # held until the job's record is written, released however the job ends
    try:
        try:
            cfg = from_composed(composed)
            if sweep:  # every job its own folder, whatever train.output_dir says
                cfg.train.output_dir = hydra_cfg.runtime.output_dir
            preemption = Preemption.install()
            if preemption is not None:  # a submitit job: a requeued one must continue where it stopped
                cfg.train.resume = cfg.train.resume or "auto"
            # Claimed (checked, locked, another run's files refused) before log.txt is opened in it, by
            # the main process alone: SLURM's tasks learn their ranks first.
            adopt_slurm_tasks()
            folder = claim_run_folder(cfg.train, main=int(os.environ.get("RANK", "0")) == 0)
            setup_logging(cfg.train.output_dir)
            metrics = run_training(cfg, preemption, folder)
        except Exception as e:  # noqa: BLE001 — a sweep goes on and reports it; one run raises it after Hydra
            if not sweep:
                _outcome["error"] = e
                return None
            log.error("job %d failed: %s", hydra_cfg.job.num, e, exc_info=not isinstance(e, UserError))
            _write_result(Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task, f"failed: {e}", {})
            return None
        if sweep and int(os.environ.get("RANK", "0")) == 0:  # one record per job, however many tasks
            _write_result(Path(cfg.train.output_dir), hydra_cfg.overrides.task, "ok", metrics)
        else:
            print(json.dumps(metrics, indent=2))
        return metrics
    finally:
        if folder is not None:
            folder.release()


def run_training(cfg, preemption: Preemption | None = None, folder=None) -> dict:
    """Train as ``cfg`` says, in this process or as one of SLURM's tasks; requeue when preempted.
    ``folder``: ``train.output_dir`` as `claim_run_folder` claimed it (the trainer claims it otherwise)."""
    from iresvid.engine.dist import adopt_slurm_tasks, cleanup
    from iresvid.engine.trainer import Trainer, TrainingInterrupted

    adopt_slurm_tasks()
    try:
        trainer = Trainer(cfg, run_folder=folder)
        if preemption is not None:
            preemption.trainer = trainer
        return trainer.fit()
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        preemption.requeue()  # submitit's own handler: requeues the job (task 0) and exits
        raise
    finally:
        cleanup()


class Preemption:
    """SLURM's warning before a time limit or a preemption (SIGUSR2), deferred to a safe point.

    submitit answers the signal at once: it resubmits the job and exits, wherever the training step was.
    Here the signal only asks the trainer to stop; at the next step boundary every process saves a
    checkpoint, and only then does submitit's own handler requeue the job.  The requeued job composes the
    same config, resumes from that checkpoint, and ends with the weights of an uninterrupted run.
    """

    def __init__(self, signum: int, submitit_handler):
        self.signum, self.submitit_handler = signum, submitit_handler
        self.trainer = None
        self.received = False

    @classmethod
    def install(cls) -> Preemption | None:
        """Take over the signal inside a submitit job (None elsewhere: nothing would requeue the job)."""
        if "SUBMITIT_EXECUTOR" not in os.environ:
            return None
        from submitit.core.job_environment import JobEnvironment

        signum = JobEnvironment._usr_sig()
        handler = signal.getsignal(signum)
        if not callable(handler):
            return None
        preemption = cls(signum, handler)
        signal.signal(signum, preemption._on_signal)
        return preemption

    def _on_signal(self, signum, frame) -> None:
        self.received = True
        if self.trainer is None:  # not training yet: nothing to save, so requeue at once
            self.requeue()
        else:
            self.trainer.request_stop()

    def requeue(self) -> None:
        log.warning("preempted or at the time limit: requeueing the job")
        self.submitit_handler(self.signum, None)
        sys.exit(-1)  # the other tasks: submitit's handler returns there, and the job is requeued whole


# ----------------------------------------------------------------------------------- a sweep's table


def _write_result(folder: Path, overrides: Sequence[str], status: str, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"overrides": list(overrides), "status": status, "metrics": metrics}
    atomic_write(folder / RESULT_FILE, json.dumps(record, indent=2) + "\n")


class SweepSummary(Callback):
    """At the end of a sweep: one table of every job's final metrics, printed and saved as summary.csv."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        rows = summarize_sweep(folder)
        _outcome["failed_jobs"] = sum(row["status"] != "ok" for row in rows)
        print(format_sweep(rows), flush=True)
        print(f"summary of {len(rows)} jobs: {folder / 'summary.csv'}", flush=True)


def summarize_sweep(folder: Path) -> list[dict]:
    """One row per job folder of a sweep: its number, its overrides, its status and its final metrics."""
    jobs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    records = []
    for job in jobs:
        try:
            records.append((job.name, json.loads((job / RESULT_FILE).read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            records.append(
                (job.name, {"overrides": [], "status": "failed: no result (killed?)", "metrics": {}})
            )
    given = {number: dict(o.split("=", 1) for o in r["overrides"] if "=" in o) for number, r in records}
    keys = list(dict.fromkeys(k for g in given.values() for k in g))
    swept = [k for k in keys if len({g.get(k) for g in given.values()}) > 1]  # what tells the jobs apart
    rows = []
    for number, record in records:
        row = {"job": number, **{k: given[number].get(k, "") for k in swept}, "status": record["status"]}
        row.update({m: record["metrics"].get(m, "") for m in SUMMARY_METRICS})
        rows.append(row)
    if rows:  # overrides are the user's text: a cell starting with "=" must stay text in a spreadsheet
        with atomic_open(folder / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[csv_cell(k) for k in rows[0]])
            writer.writeheader()
            writer.writerows({csv_cell(k): csv_cell(v) for k, v in row.items()} for row in rows)
    return rows


def format_sweep(rows: list[dict]) -> str:
    if not rows:
        return "no jobs"
    cells = [[_cell(v) for v in row.values()] for row in rows]
    header = list(rows[0])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
