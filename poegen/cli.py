"""The ``poegen`` command: ``generate`` an image from a prompt or a scene, ``batch`` jobs, list ``samplers``.

Nothing here imports torch at module level: ``poegen --help`` answers in a fraction of a second."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import defaults, samplers
from .hardware import DTYPES


def cmd_generate(args) -> int:
    from .pipeline import run
    from .job import Job

    values = {f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(Job)}
    out = Path(args.video_out or args.out)
    if args.video_out:
        values["video"] = out.suffix.lower().lstrip(".")
        if values["video"] not in ("gif", "mp4"):
            raise ValueError(f"--video {out}: name a .gif or .mp4 file")
    job = Job.from_dict(values, "generate")
    t = time.perf_counter()
    written = run(job, out, progress=not args.quiet)
    elapsed = time.perf_counter() - t
    _warn_uncertified(written)
    if job.video:
        print(f"wrote {written[0]} in {elapsed:.1f} s")
    elif len(written) > 1 and job.images > 1 and len(written) == job.images:
        print(f"wrote {len(written)} images {written[0]} .. {written[-1]} (and their _raw files) in {elapsed:.1f} s")
    elif len(written) > 1:
        print(f"wrote {len(written) - 1} frames {written[0]} .. {written[-2]} and {written[-1]} in {elapsed:.1f} s")
    else:
        out = written[0]
        print(f"wrote {out} (raw {out.with_name(out.stem + '_raw' + out.suffix)}) in {elapsed:.1f} s")
    return 0


def cmd_edit(args) -> int:
    from .pipeline import run
    from .job import Job

    values = {f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(Job)}
    job = Job.from_dict(values, "edit")
    written = run(job, Path(args.out), progress=not args.quiet)
    _warn_uncertified(written)
    from PIL import Image
    meta = json.loads(Image.open(written[0]).text["poegen"])
    print(f"wrote {written[0]}; background MSE outside the mask {meta['background_mse']:.2e}")
    return 0


def _warn_uncertified(written) -> None:
    """One ``poegen: warning:`` line on stderr per written image (or clip) its potentials do not certify: not
    progress, so shown with -q too."""
    for path, unmet in written.uncertified():
        print(f"poegen: warning: {path} is not certified: {', '.join(unmet)}", file=sys.stderr)


def cmd_batch(args) -> int:
    from .batch import run_batch

    env = {}
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1")):
        value = os.environ.get(name, default)
        try:
            env[name] = int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value[:20]!r} is not a whole number; "
                             f"unset it or set it as accelerate does (e.g. {name}={default})") from None
    rank, world = env["RANK"], env["WORLD_SIZE"]
    counts = run_batch(args.jobfile, args.out, rank, world, progress=not args.quiet)
    print(f"batch {rank}/{world}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"manifest in {args.out}")
    return 0 if counts["failed"] == 0 else 1


def cmd_compare(args) -> int:
    from . import compare, report as reports

    for flag, value, low in (("--seeds", args.seeds, 1), ("--particles", args.particles, 1), ("--steps", args.steps, 1),
                             ("--mcmc-steps", args.mcmc_steps, 0), ("--workers", args.workers, 0)):
        if value < low:
            raise ValueError(f"{flag} {value}: must be >= {low}")
    names = args.samplers.split(",")
    for n in names:
        samplers.config(n)  # unknown names fail before any work
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; compare writes a folder of tables and a report: name a folder")
    config = None
    if args.config:
        from .experts.registry import load_config
        config = load_config(args.config)
    budgets = compare.parse_budgets(args.budgets)
    # named models are large: one process unless asked; the shapes world uses one per core
    workers = args.workers or (1 if config else min(os.cpu_count() or 1, 4))
    rows, images = compare.run(args.targets, names, args.seeds, args.particles, args.mcmc_steps, args.steps,
                               args.guidance, args.potential_weight, progress=not args.quiet, workers=workers,
                               config=config, metrics=args.metrics or (), budgets=budgets, frames=args.frames,
                               budget=args.budget, options=({"reward_every": args.reward_every}
                                        if args.reward_every != defaults.REWARD_EVERY else None))
    summary = reports.summarise(rows, images)
    if out is None:  # never into the working directory unasked: a fresh folder under the system's temp dir
        import tempfile
        out = Path(tempfile.mkdtemp(prefix="poegen-compare-"))
        print(f"poegen compare: no --out given; writing the report to {out}", file=sys.stderr)
    report = reports.write(out, rows, images, summary, progress=not args.quiet)
    print(reports.table(summary))
    print(f"wrote {report} and CSV/JSON tables in {out}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import run

    return run(args)


def cmd_experts(args) -> int:
    from .experts.registry import GENERATIVE, OPTIONS, POTENTIALS

    for title, table in (("generative experts (--expert KIND:PATH); without any, the embedded shapes world is used",
                          GENERATIVE), ("potentials (--potential KIND:PATH)", POTENTIALS)):
        print(title + ":")
        for kind, (what, _) in table.items():
            print(f"  {kind:10s} {what}" + (f"; options: {', '.join(OPTIONS[kind])}" if OPTIONS.get(kind) else ""))
    print("both may also be named in a file: poegen generate --config experts.yaml (see README)")
    return 0


def cmd_env(args) -> int:
    from .envinfo import env_lines

    print("\n".join(env_lines(args.device)))
    return 0


def cmd_samplers(args) -> int:
    for name, preset in samplers.PRESETS.items():
        print(f"{name:10s} {preset}")
    return 0


THREADS_HELP = ("intra-op threads (default: OMP_NUM_THREADS, else the cores this process may use less those "
                "other processes keep busy; see `poegen env`)")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other poegen error (subcommands inherit it)."""

    def error(self, message):
        self.exit(2, f"poegen: error: {message} (see {self.prog} --help)\n")


def main(argv=None) -> int:
    """Run one poegen command line: parse it, set up logging, run the command; its exit status (0 done, else as
    ``_exit_code`` says: every error is one line on stderr)."""
    args = build_parser().parse_args(argv)
    _set_up_logging(args)
    return _run_command(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``poegen`` parser: one subcommand each, generate and edit sharing the sampling options."""
    ap = _Parser(prog="poegen", description="Generate images from a product of experts.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = ap.add_subparsers(dest="command", required=True)
    common = _sampling_options()
    _add_generate(sub, common)
    _add_edit(sub, common)
    _add_batch(sub)
    _add_compare(sub)
    _add_eval(sub)
    _add_listings(sub)
    return ap


def _sampling_options() -> argparse.ArgumentParser:
    """The options generate and edit share: the sampler, the models and their weights, the device, the output."""
    common = _Parser(add_help=False)
    common.add_argument("--sampler", default=defaults.SAMPLER, choices=samplers.available(),
                        help="a named sampler (`poegen samplers`; default %(default)s)")
    common.add_argument("--particles", type=int, default=defaults.PARTICLES, help="default %(default)s")
    common.add_argument("--steps", type=int, default=defaults.STEPS, help="noise levels (default %(default)s)")
    common.add_argument("--mcmc-steps", type=int, default=None, help="Langevin moves per level (preset default)")
    common.add_argument("--seed", type=int, default=defaults.SEED, help="default %(default)s")
    common.add_argument("--guidance", type=float, default=None,
                        help=f"composable-diffusion weight of each phrase (shapes world: {defaults.SHAPES_GUIDANCE:g}) "
                             f"or a model's guidance ({defaults.MODEL_GUIDANCE:g})")
    common.add_argument("--potential-weight", "--vlm-weight", dest="potential_weight", type=float, default=None,
                        metavar="W", help="lambda of each potential: the shapes world's questions "
                                          f"({defaults.SHAPES_POTENTIAL_WEIGHT:g}; 0: none), each --potential's "
                                          f"({defaults.MODEL_POTENTIAL_WEIGHT:g}); --vlm-weight is its deprecated "
                                          "old name")
    common.add_argument("--select", default=defaults.SELECT, choices=("best", "draw"),
                        help="which particle becomes the image: the highest final reward, or a weighted draw "
                             "(default %(default)s)")
    common.add_argument("--grad-guidance", type=float, default=defaults.GRAD_GUIDANCE,
                        help="follow the potentials' gradient in the stochastic proposal (weights keep the target; "
                             "default %(default)s)")
    common.add_argument("--reward-every", type=int, default=defaults.REWARD_EVERY, metavar="K",
                        help="score the potentials every K levels and at the last (weights stay valid; default "
                             "%(default)s)")
    common.add_argument("--expert", dest="experts", action="append", default=None, metavar="KIND:PATH",
                        help="a generative expert from a local model (see `poegen experts`); repeatable")
    common.add_argument("--potential", dest="potentials", action="append", default=None, metavar="KIND:PATH",
                        help="a discriminative expert from a local model, weighted by --potential-weight; repeatable")
    common.add_argument("--config", default=None, metavar="FILE",
                        help="a YAML/JSON file of experts and potentials with their options (see README)")
    common.add_argument("--device", default=defaults.DEVICE,
                        help="torch device for experts and particles, e.g. cuda (default %(default)s)")
    common.add_argument("--dtype", default=None, choices=DTYPES,
                        help="compute dtype of the shapes prior, or torch_dtype of named models that name none "
                             "(default: a config's dtype, else auto: bf16 only where the hardware has it natively)")
    common.add_argument("--max-memory", type=float, default=None, metavar="GB",
                        help="keep the run under GB (GPU: allocated; CPU: resident) by micro-batching and, on a GPU, "
                             "offloading idle models")
    common.add_argument("--out", default="poegen.png")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common.add_argument("--require-certified", dest="require_certified", action="store_true", default=None,
                        help="exit 6 and write nothing when the image is not certified by its own potentials "
                             "(every question answered as asked with P >= %g, nothing stray; without it such an "
                             "image is written with a 'poegen: warning:' line)" % defaults.CERTIFY_P)
    common.add_argument("--budget", default=defaults.BUDGET, choices=defaults.BUDGETS,
                        help="anytime: a first round at the cost of %d particles (poe: twice as many, without "
                             "moves), stopping as soon as an image is certified, else further rounds of --particles "
                             "up to --max-nfe; fixed: one run of --particles; auto: anytime for an image, fixed for "
                             "a clip (default %%(default)s)" % defaults.FIRST_ROUND)
    common.add_argument("--max-nfe", type=int, default=None, metavar="N",
                        help="anytime: at most N evaluations per expert over every round (default: %d fixed runs)"
                             % defaults.MAX_NFE_FACTOR)
    common.add_argument("--images", type=int, default=1, metavar="K",
                        help="K distinct images (OUT, OUT_1, ...): different ancestors, visibly different, each "
                             "certified when one is found (default %(default)s)")
    common.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    return common


def _add_generate(sub, common):
    """``poegen generate``: a prompt, a layout spec or a scene spec to an image (or frames, or a clip)."""
    g = sub.add_parser("generate", parents=[common],
                       help="sample an image for a prompt, a layout spec or a scene spec, in the embedded shapes world "
                            "or on named models (--expert, --config)")
    g.add_argument("prompt", nargs="?", help="e.g. 'a red ball and a blue box', 'a green wedge left of a yellow ball'")
    g.add_argument("--scene", default=None, help="a scene spec (YAML/JSON, see examples/): physics places the objects")
    g.add_argument("--layout", default=None, help="a layout spec (YAML/JSON, see examples/): phrases with boxes")
    g.add_argument("--compose", action="store_true",
                   help="named models: split the prompt into objects at 'and' and commas, one expert and question each")
    g.add_argument("--part", dest="parts", action="append", default=None, metavar="PHRASE",
                   help="an object phrase (repeatable), instead of splitting the prompt")
    g.add_argument("--question", dest="questions", action="append", default=None, metavar="TEXT",
                   help="what every potential asks (repeatable; default: each object and relation)")
    g.add_argument("--frames", type=int, default=None,
                   help="with --scene: simulate N time points, one image each, and a GIF; with --video: frames per "
                        "clip (Wan: 4k + 1, default 81)")
    g.add_argument("--video", dest="video_out", default=None, metavar="PATH",
                   help="a clip: the shapes world's (a --scene or a motion prompt, 'a red ball rolls off a blue "
                        f"box', default {defaults.SHAPES_CLIP_FRAMES} frames, written at {defaults.DISPLAY_PX} px "
                        "with NAME_raw beside) or a video model's (--expert wan:PATH), written as .gif, or .mp4 "
                        "with the video extra "
                        "(pip install 'poegen[video]'); instead of --out")
    g.add_argument("--first-frame", default=None, metavar="IMAGE",
                   help="with --video: the clip's first frame, for a Wan image-to-video folder (its size is the "
                        "clip's)")
    g.add_argument("--control", default=None, metavar="VIDEO",
                   help="with --video: a control video (depth, pose; .gif, .mp4 with the video extra, or a folder of "
                        "PNG frames) steering a Wan VACE folder (its frames and size are the clip's)")
    g.add_argument("--fps", type=float, default=None,
                   help=f"frames per second of --video (default 16; the shapes world: {defaults.SHAPES_CLIP_FPS:g}) "
                        "or of a scene's GIF (default 4)")
    g.set_defaults(fn=cmd_generate)


def _add_edit(sub, common):
    """``poegen edit``: objects added to a given image, placed by a mask or by physics."""
    ed = sub.add_parser("edit", parents=[common], help="insert objects into a given image, placed by a mask or by "
                                                       "physics (--scene), with the background kept")
    ed.add_argument("image", help="the image to edit (PNG, JPEG, ...)")
    ed.add_argument("prompt", nargs="?", default=None, help="what to add, e.g. 'a red ball' (with --scene: optional)")
    ed.add_argument("--mask", default=None, help="white where the image may change, the image's size")
    ed.add_argument("--scene", default=None, help="a scene spec listing the objects in the image and the new ones "
                                                  "(new: true); pybullet drops the new ones onto the others")
    ed.add_argument("--margin", type=int, default=defaults.MARGIN,
                    help="with --scene: pixels of change around the new objects (default %(default)s)")
    ed.add_argument("--resize", action="store_true", help="resize the image (and mask) to the family's size")
    ed.add_argument("--weights-only", dest="replace_known", action="store_false", default=None,
                    help="keep the background by the KnownPixels weights alone, not by replacing the kept pixels "
                         "with the image noised to each level (the default, which measured better)")
    ed.set_defaults(fn=cmd_edit)


def _add_batch(sub):
    """``poegen batch``: a job file's items into a folder with a manifest."""
    b = sub.add_parser("batch", help="run a YAML or JSONL list of generate jobs into a folder with a manifest; "
                                     "restarts skip finished items; shards over accelerate processes")
    b.add_argument("jobfile")
    b.add_argument("--out", default="poegen-batch")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    b.set_defaults(fn=cmd_batch)


def _add_compare(sub):
    """``poegen compare``: samplers at equal NFE on targets, tables and a report."""
    from . import evaluate

    c = sub.add_parser("compare", help="compare samplers at equal NFE on prompts, layout specs or scene specs, in "
                                         "the shapes world or on named models (--config); tables and an HTML report")
    c.add_argument("targets", nargs="+", metavar="PROMPT_OR_SPEC",
                   help="prompts, or layout or scene spec files (.yaml, .yml, .json)")
    c.add_argument("--config", default=None, metavar="FILE",
                   help="named experts and potentials to steer with (see `poegen generate --config`); default: "
                        "the shapes world")
    c.add_argument("--metrics", nargs="+", default=None, metavar="KIND:PATH",
                   help="scorers that only evaluate, never steer (clip, pickscore, vqa; detector: mIoU on boxes)")
    c.add_argument("--budgets", default=None, metavar="N,N,...",
                   help="poe particle counts to run every sampler at (equal NFE each); plots reward against NFE")
    c.add_argument("--samplers", default=",".join(defaults.COMPARE_SAMPLERS), help="default %(default)s")
    c.add_argument("--budget", default=defaults.BUDGET, choices=defaults.BUDGETS, help=evaluate.BUDGET_HELP)
    c.add_argument("--seeds", type=int, default=defaults.COMPARE_SEEDS, help="default %(default)s")
    c.add_argument("--particles", type=int, default=defaults.PARTICLES, help="poe's particles (default %(default)s, "
                   "generate's; a 4 x 4 x 8 comparison takes minutes on 2 CPU cores)")
    c.add_argument("--mcmc-steps", type=int, default=samplers.PRESETS["poe"]["mcmc_steps"],
                   help="poe/ais moves per level (default %(default)s, poe's preset); the others get equal NFE")
    c.add_argument("--steps", type=int, default=defaults.STEPS, help="noise levels (default %(default)s)")
    c.add_argument("--guidance", type=float, default=None,
                   help=f"phrase weight (shapes world: {defaults.SHAPES_GUIDANCE:g}; named models: "
                        f"{defaults.MODEL_GUIDANCE:g})")
    c.add_argument("--potential-weight", "--vlm-weight", dest="potential_weight", type=float, default=None,
                   metavar="W", help=f"lambda of each question (shapes world: {defaults.SHAPES_POTENTIAL_WEIGHT:g}; "
                                     f"named models: {defaults.MODEL_POTENTIAL_WEIGHT:g}); --vlm-weight is its "
                                     "deprecated old name")
    c.add_argument("--reward-every", type=int, default=defaults.REWARD_EVERY, metavar="K",
                   help="score the potentials every K levels (default %(default)s)")
    c.add_argument("--frames", type=int, default=None, metavar="N",
                   help="compare clips of N frames of shapes-world motion prompts ('a red ball rolls off a blue box'), "
                        "judged per frame against their simulation (IoU, exact); the report shows them as GIFs")
    c.add_argument("--workers", type=int, default=0,
                   help="processes sharing the runs (results do not change); 0 = one per CPU core, at most 4 "
                        "(one with --config)")
    c.add_argument("--out", default=None, metavar="DIR",
                   help="the folder for the tables and report.html (default: a new folder under the system's temp "
                        "directory, printed)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(fn=cmd_compare)


def _add_eval(sub):
    """``poegen eval``: the shapes world's benchmarks (``poegen.evaluate``)."""
    from .evaluate import add_parsers

    ev = sub.add_parser("eval", help="the shapes world's benchmarks (shapes, physics, edit, video): samplers at equal "
                                     "NFE judged by the checker")
    add_parsers(ev)
    ev.set_defaults(fn=cmd_eval)


def _add_listings(sub):
    """``poegen experts``, ``samplers`` and ``env``: what is there to name, and this machine."""
    e = sub.add_parser("experts", help="list the expert kinds that --expert and --potential accept")
    e.set_defaults(fn=cmd_experts)
    s = sub.add_parser("samplers", help="list the named samplers and their presets")
    s.set_defaults(fn=cmd_samplers)
    v = sub.add_parser("env", help="versions, device, CPU features, and the dtype and threads that auto picks, for "
                                   "a bug report")
    v.add_argument("--device", default="cpu", help="the device to report the dtype pick for, e.g. cuda")
    v.set_defaults(fn=cmd_env)


def _set_up_logging(args):
    """Log records on stderr, each on its own line beside progress bars (INFO with -v); libraries' bars off when
    quiet or not on a terminal."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", handlers=[_BarSafeHandler()])
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        _quiet_libraries()


def _run_command(args) -> int:
    """Run the parsed command (generate, edit and batch with their threads picked and SIGTERM raised as an
    interrupt); an error or an interrupt becomes one line on stderr and its exit status."""
    restore = _raise_on_sigterm() if args.command in ("generate", "edit", "batch") else None
    try:
        if args.command in ("generate", "edit", "batch"):
            from .hardware import configure_threads
            configure_threads(args.threads)
        return args.fn(args)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: temporary files and locks were cleared on the way out
        terminated = isinstance(e, Terminated)
        _close_bars()
        print("poegen: terminated" if terminated else "poegen: interrupted", file=sys.stderr)
        return 143 if terminated else 130  # 128 + the signal's number, as a shell reports a killed command
    except Exception as e:  # every error reaches the user as one line; -v adds the traceback
        _close_bars()
        if args.verbose:
            import traceback
            traceback.print_exc()
        code, hint = _exit_code(e)
        message = " ".join(str(e).split())  # one line, whatever the exception held
        print(f"poegen: error: {message}{hint}", file=sys.stderr)
        return code
    finally:
        if restore is not None:
            restore()


def entry() -> None:
    """The console script and ``python -m poegen``: exit with ``main``'s status. After an interrupt (130, 143) the
    process leaves at once, its streams and logs flushed: an interrupt that passed through a library's nested
    evaluation makes CPython's shutdown re-raise SIGINT, and the shell would see a death by signal instead."""
    code = main()
    if code in (130, 143):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, accelerate stopping its workers), raised where Python next runs, like Ctrl-C,
    so the same cleanup runs on the way out: no half-written file stays, the batch manifest ends on a whole record."""


def _raise_on_sigterm():
    """Make the first SIGTERM raise Terminated (a second is ignored, so it cannot cut the cleanup short); returns
    a function that puts the previous handler back. Only the main thread may set handlers: elsewhere, nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _bars():
    """The progress bars drawn now (tqdm's, if it was imported at all)."""
    std = sys.modules.get("tqdm.std")
    return list(std.tqdm._instances) if std is not None else []


def _quiet_libraries():
    """No progress bars from transformers and diffusers either (their "Loading weights" bars), as ours: --quiet,
    or stderr not a terminal. The environment variable reaches them when imported later, the call when already."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            sys.modules[name].utils.logging.disable_progress_bar()


def _close_bars():
    """Close the bars an error left drawn, so that what follows starts at column 0: a bar that stays (batch,
    compare) ends its line, a passing one (a stage) is cleared."""
    for bar in _bars():
        bar.close()


class _BarSafeHandler(logging.StreamHandler):
    """Log records to stderr, each on its own line even while progress bars are drawn (``tqdm.write`` clears
    the bars, writes the line and draws them again)."""

    def emit(self, record):
        if not _bars():
            return super().emit(record)
        try:
            sys.modules["tqdm.std"].tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _exit_code(e: Exception):
    """(exit code, hint) of an error: 2 bad input, 3 all particles died, 4 files and disks, 5 anything else, 6 an
    image not certified where one was required (--require-certified)."""
    from .certificate import NotCertified

    if isinstance(e, NotCertified):
        return 6, ""
    if isinstance(e, samplers.AllParticlesDead):
        return 3, (" From the command line: raise --particles, lower --potential-weight, or widen a hard constraint's "
                   "tolerance in the scene spec.")
    if isinstance(e, (ValueError, FileNotFoundError)):
        return 2, ""
    if isinstance(e, OSError):
        return 4, ""
    return 5, f" ({type(e).__name__}; run with -v for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
