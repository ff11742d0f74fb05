"""The ``iresvid`` command: thin argument parsing over the library.

Subcommands: ``train`` and ``test`` (also ``tools/train.py``, ``tools/test.py``), ``predict CHECKPOINT
INPUT...`` (top-k per video and per window; also ``tools/predict.py``), ``prepare SRC DST`` (make a
downloaded set train-ready), ``zoo`` (params and GFLOPs of every model), ``make-demo-data ROOT`` (the
synthetic motion dataset), ``bench`` (also ``tools/benchmark.py``), ``config`` (every config key with its
type, default and meaning).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from iresvid.benchmarks import add_arguments as add_benchmark_arguments
from iresvid.errors import UserError


class _AppendHandler(logging.StreamHandler):
    """A log file opened by `iresvid.files.open_append` (``logging.FileHandler`` follows a symlink planted
    at its name); closed with the handler."""

    def __init__(self, path: Path):
        from iresvid.files import open_append

        super().__init__(open_append(path))

    def close(self) -> None:
        self.acquire()
        try:
            self.flush()
            self.stream.close()
        finally:
            self.release()
            super().close()


def setup_logging(output_dir: str | Path | None) -> None:
    """INFO to stderr on the main process (warnings only elsewhere), and to ``output_dir/log.txt``, which
    is appended to only if it is a regular file of ours (never through a symlink)."""
    rank = int(os.environ.get("RANK", "0"))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if output_dir is not None and rank == 0:
        from iresvid.files import output_dir as checked_dir

        handlers.append(_AppendHandler(checked_dir(output_dir) / "log.txt"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def run_guarded(fn) -> int:
    """Run a command (its exit status, 0 when it returns none); a mistake in its input ends it with a
    one-line message and exit code 2."""
    try:
        status = fn()
    except (UserError, FileNotFoundError) as e:  # the user's to fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status or 0


def _zoo(args: argparse.Namespace) -> int:
    from iresvid.zoo import format_table, zoo_rows

    def progress(row):
        print(f"  {row.name}", file=sys.stderr, flush=True)

    rows = zoo_rows(args.pattern, flops=not args.no_flops, progress=progress if args.verbose else None)
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(format_table(rows, markdown=args.markdown))
    return 0


def _make_demo_data(args: argparse.Namespace) -> int:
    from iresvid.data.synthetic import make_demo_data

    def run() -> None:  # a folder holding the demo's files already is refused in one line
        print(make_demo_data(args.root, layout=args.layout, seed=args.seed).summary())

    return run_guarded(run)


# --config of the tools that start from a checkpoint (test, extract): a checkpoint's own config is plain
# data from which only the model and clip settings are taken (`engine.build.checkpoint_config`).
CONFIG_HELP = (
    "YAML config, used whole (default: the checkpoint's model and clip settings, the data from key=value "
    "overrides such as data.root=...)"
)

TRAIN_USAGE = """usage: iresvid train --config FILE [--resume auto|CHECKPOINT] [-m] [key=value ...]

Train as the YAML FILE says, through Hydra: key=value overrides in Hydra's grammar (+key=value adds,
~key removes), -m for a multirun sweep (optim.lr=0.05,0.1 runs both), hydra/launcher=submitit_slurm
with hydra.launcher.* for a SLURM cluster.  Hydra's own flags (--cfg job, --info, --hydra-help) work.
"""


def _train(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(TRAIN_USAGE, end="")
        return 0

    def run():
        from iresvid.engine.launch import train_main

        return train_main(argv)

    return run_guarded(run)


def _test(args: argparse.Namespace) -> int:
    def run():
        from iresvid.config import load_config
        from iresvid.engine.testing import run_test

        setup_logging(None)
        cfg = load_config(args.config, args.overrides) if args.config else None
        result, cfg, out = run_test(
            args.checkpoint, cfg, overrides=args.overrides, output_dir=args.output, use_ema=not args.no_ema
        )
        print(f"{'level':<7}{'top1':>8}{'top5':>8}{'mean-class':>12}{'samples':>9}")
        for name, meter in (("clip", result.clip), ("video", result.video)):
            m = meter.compute()
            print(
                f"{name:<7}{m['top1']:8.2f}{m['top5']:8.2f}{m['mean_class_accuracy']:12.2f}{m['num_samples']:9d}"
            )
        print(f"{cfg.data.num_clips} clips × {cfg.data.num_crops} crops per video; reports in {out}")

    return run_guarded(run)


def _predict(args: argparse.Namespace) -> int:
    outcome = {"failed": 0}

    def run():
        from iresvid.engine.predict import Predictor, find_videos, write_predictions

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        predictor = Predictor(
            args.checkpoint,
            device=args.device,
            views=args.views,
            batch_size=args.batch_size,
            amp=args.amp,
            num_workers=args.num_workers,
            model=args.model,
            classes=args.classes,
            overrides=args.set,
            use_ema=not args.no_ema,
            progress=not args.no_progress,
        )
        videos = find_videos(args.inputs)
        results = predictor.predict_many(videos, window=args.window, stride=args.stride, topk=args.topk)
        topk = min(args.topk, len(predictor.classes))
        echo = args.out is None or args.verbose
        summary = write_predictions(results, args.out, topk=topk, echo=echo)
        outcome["failed"] = len(summary.failed)
        print(summary.text(args.out), file=sys.stderr)

    code = run_guarded(run)
    return code or (1 if outcome["failed"] else 0)


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="training checkpoint, TorchScript export (model.pt), or state dict"
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="videos, folders (recursive), list files")
    parser.add_argument("--window", type=float, default=None, help="also predict windows of SECONDS")
    parser.add_argument(
        "--stride", type=float, default=None, help="seconds between windows (default: --window)"
    )
    parser.add_argument("--topk", type=int, default=5, help="classes per prediction")
    parser.add_argument("--views", default=None, help="CLIPSxCROPS, e.g. 10x3 (default: the checkpoint's)")
    parser.add_argument("--out", default=None, help="FILE.jsonl or FILE.csv (default: print)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    parser.add_argument("--batch-size", type=int, default=None, help="views per forward pass")
    parser.add_argument("--amp", default="auto", help="auto (on CUDA), none, bf16, fp16")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes")
    parser.add_argument("--model", default=None, help="with a bare state dict: its registry name")
    parser.add_argument("--classes", default=None, help="class-index file (a bare state dict needs one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. data.test_size=256",
    )
    parser.add_argument("--no-ema", action="store_true", help="the raw weights, not their EMA")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the predictions also with --out")


def _prepare(args: argparse.Namespace) -> int:
    from iresvid.data import prepare as prep

    def job_options() -> prep.JobOptions | None:
        """The job array the flags ask for (None: prepare here), or the mistake in them."""
        field_of = {
            "--slurm-partition": "partition", "--slurm-time": "time_min", "--slurm-cpus": "cpus",
            "--slurm-account": "account", "--slurm-qos": "qos",
            "--slurm-array-parallelism": "array_parallelism",
        }  # fmt: skip
        slurm = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in field_of}
        slurm = {flag: value for flag, value in slurm.items() if value is not None}  # the flags given
        if args.launcher is None:
            if args.shards is not None or args.no_wait or slurm:
                raise prep.PrepareError("--shards, --no-wait and --slurm-* need --launcher slurm or local")
            return None
        if args.shards is None:
            raise prep.PrepareError("--launcher runs a job array of shards: give --shards N")
        if args.shards < 1:
            raise prep.PrepareError(f"--shards: N must be at least 1, got {args.shards}")
        if args.shard is not None or args.merge:
            raise prep.PrepareError(
                "--shards N prepares (and merges) every shard as a job array: drop --shard and --merge"
            )
        if args.launcher == "local":
            if slurm:
                raise prep.PrepareError(f"{', '.join(slurm)}: for --launcher slurm, not local")
            cpus = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // args.shards)
            return prep.JobOptions("local", cpus=cpus, time_min=None)
        if args.workers is not None:
            raise prep.PrepareError("--workers: a SLURM task runs --slurm-cpus encoding processes")
        return prep.JobOptions("slurm", **{field_of[flag]: value for flag, value in slurm.items()})

    def run():
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        jobs = job_options()
        if args.merge:
            if len(args.paths) != 1:
                raise prep.PrepareError("prepare --merge takes one folder: the prepared root DST")
            prep.merge_shards(args.paths[0])
            return
        if len(args.paths) != 2:
            raise prep.PrepareError(
                "prepare takes two folders: SRC (the download) and DST (the prepared copy)"
            )
        fmt, annotation_options = args.format, {}
        if args.config:  # the layout a training config describes: the same keys, explicit flags win
            from iresvid.config import load_config

            data = load_config(args.config, [f"data.root={args.paths[0]}"]).data
            fmt = fmt or data.format
            annotation_options = {key: getattr(data, key) for key in prep.ANNOTATION_OPTIONS}
        annotation_options |= {
            key: getattr(args, key) for key in prep.ANNOTATION_OPTIONS if getattr(args, key) is not None
        }
        options = {
            "short_side": args.short_side,
            "gop": args.gop,
            "crf": args.crf,
            "preset": args.preset,
            "keep_audio": args.keep_audio,
            "min_frames": args.min_frames,
            "verify": args.verify,
            **annotation_options,
        }
        if jobs is None:
            report = prep.prepare(
                *args.paths,
                fmt or "folder",
                workers=args.workers,
                shard=prep.parse_shard(args.shard or "0/1"),
                progress=not args.no_progress,
                **options,
            )
        else:
            submitted = prep.submit_shards(
                *args.paths, fmt or "folder", shards=args.shards, jobs=jobs, **options
            )
            ids = ", ".join(sorted({job.job_id.split("_")[0] for job in submitted}))  # SLURM: one array id
            print(f"submitted {len(submitted)} shards (job {ids}); logs in {submitted[0].paths.folder}")
            if args.no_wait:
                print(f"once they have finished, run: iresvid prepare --merge {args.paths[1]}")
                return
            report = prep.wait_for_shards(args.paths[1], submitted)
        print(report.summary, end="")
        if report.manifest is None:
            print(
                f"shard {args.shard} done; once every shard is, run: iresvid prepare --merge {args.paths[1]}"
            )
        else:
            print(f"manifest: {report.manifest}")

    return run_guarded(run)


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from iresvid.config import DataConfig

    defaults = DataConfig()
    parser.add_argument("paths", nargs="+", metavar="SRC DST", help="the download and the prepared copy")
    parser.add_argument(
        "--format", choices=("kinetics", "ucf101", "folder", "list"), default=None, help="default: folder"
    )
    parser.add_argument(
        "--config", default=None, help="take the format and the layout from a training config"
    )
    for key in ("train_annotations", "val_annotations", "train_dir", "val_dir", "annotation_dir"):
        flag = "--" + key.replace("_", "-")
        parser.add_argument(
            flag, dest=key, default=None, help=f"as data.{key} (default {getattr(defaults, key)})"
        )
    parser.add_argument("--classes-file", dest="classes_file", default=None, help="as data.classes_file")
    parser.add_argument(
        "--num-classes", dest="num_classes", type=int, default=None, help="as data.num_classes"
    )
    parser.add_argument(
        "--short-side", type=int, default=320, help="short side of the output (never enlarged)"
    )
    parser.add_argument("--gop", type=int, default=16, help="a key frame every N frames")
    parser.add_argument("--crf", type=int, default=23, help="libx264 quality (lower: better, larger)")
    parser.add_argument("--preset", default="veryfast", help="libx264 preset (speed against size)")
    parser.add_argument("--keep-audio", action="store_true", help="keep the first audio track (as AAC)")
    parser.add_argument("--min-frames", type=int, default=8, help="fewer frames is 'too short'")
    parser.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: one per core)"
    )
    parser.add_argument(
        "--shard", default=None, help="I/N: prepare the I-th (0-based) of N parts (default 0/1: all)"
    )
    parser.add_argument(
        "--verify", choices=("full", "sample"), default="sample", help="decode every output frame, or some"
    )
    parser.add_argument("--merge", action="store_true", help="merge the finished shards of DST (one path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    array = parser.add_argument_group(
        "job array", "prepare N shards as N tasks of one job array (submitit), then merge them"
    )
    array.add_argument("--shards", type=int, default=None, metavar="N", help="how many shards (tasks)")
    array.add_argument(
        "--launcher",
        choices=("slurm", "local"),
        default=None,
        help="slurm: sbatch a job array; local: every task at once on this machine, --workers each "
        "(default: the cores shared out)",
    )
    array.add_argument(
        "--no-wait", action="store_true", help="submit and return; merge later with --merge DST"
    )
    array.add_argument("--slurm-partition", default=None, help="(default: the cluster's)")
    array.add_argument(
        "--slurm-time", type=int, default=None, metavar="MIN", help="per task, then requeued (default 240)"
    )
    array.add_argument(
        "--slurm-cpus", type=int, default=None, help="per task, each an encoding process (default 8)"
    )
    array.add_argument("--slurm-account", default=None)
    array.add_argument("--slurm-qos", default=None)
    array.add_argument(
        "--slurm-array-parallelism", type=int, default=None, metavar="K", help="tasks running at once"
    )


def _bench(args: argparse.Namespace) -> int:
    from iresvid.benchmarks.runner import run

    return run(args, args.parser)


def _config(args: argparse.Namespace) -> int:
    from iresvid.config import describe_schema

    for key, type_name, default, help_text in describe_schema():
        print(f"{key:<32} {type_name:<18} {default:<28} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iresvid", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    # `train` takes Hydra's command line (see TRAIN_USAGE): `main` hands it over before argparse reads it.
    sub.add_parser("train", help="train from a YAML config through Hydra (sweeps: -m; SLURM: submitit)")

    test = sub.add_parser("test", help="clip- and video-level evaluation of a checkpoint, with reports")
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--config", default=None, help=CONFIG_HELP)
    test.add_argument("--output", default=None, help="report folder (default: <checkpoint dir>/test)")
    test.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not their EMA")
    test.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/data")
    test.set_defaults(func=_test)

    predict = sub.add_parser("predict", help="top-k classes of videos (and of their time windows)")
    _add_predict_arguments(predict)
    predict.set_defaults(func=_predict)

    prepare = sub.add_parser(
        "prepare", help="verify, re-encode and index a downloaded set into a train-ready copy with a manifest"
    )
    _add_prepare_arguments(prepare)
    prepare.set_defaults(func=_prepare)

    zoo = sub.add_parser("zoo", help="params and GFLOPs of every registered model")
    zoo.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'iresnet3d*'")
    zoo.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    zoo.add_argument("--no-flops", action="store_true", help="parameters only (fast)")
    zoo.add_argument("-v", "--verbose", action="store_true", help="name each model as it is measured")
    zoo.set_defaults(func=_zoo)

    demo = sub.add_parser("make-demo-data", help="write the synthetic motion dataset (real encoded videos)")
    demo.add_argument("root")
    demo.add_argument("--layout", choices=("ucf101", "kinetics"), default="ucf101")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_make_demo_data)

    bench = sub.add_parser("bench", help="speed, memory and deep-gradient benchmarks, written as JSON")
    add_benchmark_arguments(bench)
    bench.set_defaults(func=_bench, parser=bench)

    config = sub.add_parser("config", help="every config key with its type, default and meaning")
    config.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
