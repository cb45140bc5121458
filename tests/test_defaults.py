"""One set of defaults: ``Job``, the options of the CLI's commands (eval's shapes and physics suites too) and their
help texts, ``compare.run``, ``samplers.sample`` and the engine all take a job's defaults from ``poegen/defaults.py``.
A number written into any of them again fails here: the CLI is checked with the defaults changed, the rest by its
source."""
import ast
import inspect
from pathlib import Path

import pytest

from poegen import cli, compare, defaults, hardware, samplers
from poegen.experts.shapes import prompt
from poegen.job import Job
from poegen.samplers.engine import SamplerConfig

PACKAGE = Path(cli.__file__).parent
# Job's fields and the defaults they take
JOB = {"sampler": "SAMPLER", "particles": "PARTICLES", "steps": "STEPS", "seed": "SEED", "select": "SELECT",
       "grad_guidance": "GRAD_GUIDANCE", "reward_every": "REWARD_EVERY", "device": "DEVICE", "margin": "MARGIN"}


def parsed(monkeypatch, *argv):
    """The options ``poegen ARGV`` would run its command with (the command itself not run)."""
    seen = []
    for name in ("cmd_generate", "cmd_edit", "cmd_batch", "cmd_compare", "cmd_eval"):
        monkeypatch.setattr(cli, name, lambda args: seen.append(args) or 0)
    monkeypatch.setattr(hardware, "configure_threads", lambda requested=None: None)
    assert cli.main(list(argv)) == 0
    return seen[0]


def helped(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_a_job_takes_the_defaults():
    job = Job()
    assert {f: getattr(job, f) for f in JOB} == {f: getattr(defaults, d) for f, d in JOB.items()}
    assert job.guidance is None and job.potential_weight is None and job.mcmc_steps is None  # the family's / preset's
    assert Job.from_dict({"prompt": "a red ball"}, "job") == Job(prompt="a red ball")


def test_the_cli_takes_the_defaults(monkeypatch):
    for command in (["generate", "a red ball"], ["edit", "in.png", "a red ball", "--mask", "m.png"]):
        args = parsed(monkeypatch, *command)
        assert {f: getattr(args, f) for f in JOB if hasattr(args, f)} == \
            {f: getattr(defaults, d) for f, d in JOB.items() if hasattr(args, f)}
        assert args.guidance is None and args.potential_weight is None and args.mcmc_steps is None
    assert parsed(monkeypatch, "edit", "in.png", "--scene", "s.yaml").margin == defaults.MARGIN
    args = parsed(monkeypatch, "compare", "a red ball")
    assert (args.samplers.split(","), args.seeds, args.particles, args.steps, args.mcmc_steps, args.reward_every) == \
        (list(defaults.COMPARE_SAMPLERS), defaults.COMPARE_SEEDS, defaults.PARTICLES, defaults.STEPS,
         samplers.PRESETS["poe"]["mcmc_steps"], defaults.REWARD_EVERY)
    assert args.guidance is None and args.potential_weight is None
    for suite in ("shapes", "physics"):
        args = parsed(monkeypatch, "eval", suite)
        assert (args.particles, args.steps, args.mcmc_steps) == \
            (defaults.PARTICLES, defaults.STEPS, samplers.PRESETS["poe"]["mcmc_steps"]), suite
        assert args.guidance is None


def test_a_batch_item_takes_the_defaults(tmp_path):
    from poegen.batch import read_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a red ball"}\n')
    ((_, job),) = read_jobs(jobs)
    assert job == Job(prompt="a red ball") and job.particles == defaults.PARTICLES and job.steps == defaults.STEPS


def test_the_cli_follows_changed_defaults(monkeypatch, capsys):
    """Change every default: the parsed options and the help texts follow, so none is written into cli.py."""
    changed = {"SAMPLER": "smc", "PARTICLES": 13, "STEPS": 7, "SEED": 5, "SELECT": "draw", "GRAD_GUIDANCE": 0.25,
               "REWARD_EVERY": 3, "DEVICE": "meta", "MARGIN": 4, "SHAPES_GUIDANCE": 9.25,
               "SHAPES_POTENTIAL_WEIGHT": 4.75, "MODEL_GUIDANCE": 1.5, "MODEL_POTENTIAL_WEIGHT": 0.125,
               "COMPARE_SAMPLERS": ("smc", "poe"), "COMPARE_SEEDS": 3}
    for name, value in changed.items():
        monkeypatch.setattr(defaults, name, value)
    args = parsed(monkeypatch, "generate", "a red ball")
    job = {f: d for f, d in JOB.items() if f != "margin"}  # edit's only
    assert {f: getattr(args, f) for f in job} == {f: changed[d] for f, d in job.items()}
    assert parsed(monkeypatch, "edit", "in.png", "--scene", "s.yaml").margin == 4
    args = parsed(monkeypatch, "compare", "a red ball")
    assert (args.samplers, args.seeds, args.particles, args.steps, args.reward_every) == ("smc,poe", 3, 13, 7, 3)
    for command in ("generate", "compare"):
        text = helped(capsys, command)
        for value in ("9.25", "4.75", "1.5", "0.125"):  # the weights a job gets when it names none
            assert value in text, (command, value)
        assert "(default 7)" in text, command
    assert "default 13" in helped(capsys, "generate") and "default smc,poe" in helped(capsys, "compare")
    for suite in ("shapes", "physics"):  # the eval suites that run at a job's defaults
        args = parsed(monkeypatch, "eval", suite)
        assert (args.particles, args.steps) == (13, 7), suite
        text = helped(capsys, "eval", suite)
        assert "9.25" in text and "(default 13)" in text and "(default 7)" in text, suite
    assert "4.75" in helped(capsys, "eval", "shapes") and parsed(monkeypatch, "eval", "physics").grad_guidance == 0.25


def test_the_help_texts_state_the_defaults(capsys):
    text = helped(capsys, "generate")
    assert f"shapes world: {defaults.SHAPES_GUIDANCE:g}" in text
    assert f"({defaults.SHAPES_POTENTIAL_WEIGHT:g}; 0: none)" in text
    assert f"noise levels (default {defaults.STEPS})" in text
    text = helped(capsys, "compare")
    assert f"shapes world: {defaults.SHAPES_GUIDANCE:g}" in text and f"shapes world: " \
        f"{defaults.SHAPES_POTENTIAL_WEIGHT:g}" in text and f"poe's particles (default {defaults.PARTICLES}" in text


def _defaults_of(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_the_python_entries_take_the_defaults():
    run = _defaults_of(compare.run)
    assert (tuple(run["sampler_names"]), run["seeds"], run["particles"], run["steps"], run["mcmc_steps"]) == \
        (defaults.COMPARE_SAMPLERS, defaults.COMPARE_SEEDS, defaults.PARTICLES, defaults.STEPS,
         samplers.PRESETS["poe"]["mcmc_steps"])
    assert run["guidance"] is None and run["potential_weight"] is None
    sample = _defaults_of(samplers.sample)
    assert (sample["sampler"], sample["num_particles"], sample["num_steps"]) == \
        (defaults.SAMPLER, defaults.PARTICLES, defaults.STEPS)
    assert _defaults_of(samplers.config)["sampler"] == defaults.SAMPLER
    assert (prompt.GUIDANCE, prompt.VLM_WEIGHT) == (defaults.SHAPES_GUIDANCE, defaults.SHAPES_POTENTIAL_WEIGHT)


def test_the_engine_default_is_the_presets():
    """SamplerConfig's MCMC moves are the default sampler's, and every preset names its own."""
    assert all("mcmc_steps" in preset for preset in samplers.PRESETS.values())
    assert SamplerConfig().mcmc_steps == samplers.PRESETS[defaults.SAMPLER]["mcmc_steps"]
    assert samplers.config().mcmc_steps == SamplerConfig().mcmc_steps


def _literal_defaults(path: Path, function: str = None, names=()) -> dict:
    """The defaults written as literal numbers or texts: of ``function``'s parameters, or of a class's fields."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in ast.walk(tree):
        if function and isinstance(node, ast.FunctionDef) and node.name == function:
            args = node.args.args + node.args.kwonlyargs
            values = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + \
                node.args.kw_defaults
            found.update({a.arg: ast.literal_eval(v) for a, v in zip(args, values)
                          if isinstance(v, ast.Constant) and v.value is not None and a.arg in names})
        elif not function and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in names and isinstance(node.value, ast.Constant):
            found[node.target.id] = node.value.value
    return found


def test_no_default_is_written_twice():
    """Job's fields and the Python entries' parameters name poegen.defaults; none repeats its value."""
    assert _literal_defaults(PACKAGE / "job.py", names=JOB) == {}
    assert _literal_defaults(PACKAGE / "compare.py", "run", ("sampler_names", "seeds", "particles", "steps",
                                                              "mcmc_steps")) == {}
    assert _literal_defaults(PACKAGE / "samplers" / "__init__.py", "sample", ("sampler", "num_particles",
                                                                              "num_steps")) == {}
    assert _literal_defaults(PACKAGE / "samplers" / "__init__.py", "config", ("sampler",)) == {}


def test_the_named_models_weights_are_the_defaults():
    """A job with named models that gives no weights gets defaults.MODEL_GUIDANCE and MODEL_POTENTIAL_WEIGHT."""
    source = (PACKAGE / "families.py").read_text()
    assert "1.0 if guidance is None" not in source and "1.0 if potential_weight is None" not in source
    assert "defaults.MODEL_GUIDANCE" in source and "defaults.MODEL_POTENTIAL_WEIGHT" in source


def test_defaults_load_nothing():
    import subprocess
    import sys

    code = "import sys; import poegen.defaults; print(sorted(m for m in sys.modules if m.startswith('poegen')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['poegen', 'poegen.defaults']"


def test_the_api_draws_what_the_cli_draws(tmp_path, monkeypatch):
    """The layout example through build_product and sample, at the CLI's settings, gives `poegen generate`'s image:
    the same dtype pick, the same sampler defaults."""
    import numpy as np
    import torch
    from PIL import Image

    import poegen

    monkeypatch.setattr(hardware, "_state", hardware._Threads())  # --threads 1 pins the count for this test only
    layout = str(Path(cli.__file__).parent.parent / "examples" / "layout_two_objects.yaml")
    out = tmp_path / "cli.png"
    assert cli.main(["generate", "--layout", layout, "--particles", "2", "--steps", "3", "--threads", "1", "-q",
                     "--out", str(out)]) == 0
    product = poegen.build_product(poegen.load_layout(layout))
    result = poegen.sample(product, num_particles=2, num_steps=3, select=defaults.SELECT,
                           generator=torch.Generator().manual_seed(defaults.SEED))
    api = np.asarray(poegen.decode_images(product, result)[0], dtype=int)
    raw = np.asarray(Image.open(tmp_path / "cli_raw.png").convert("RGB"), dtype=int)  # the sample's own pixels
    assert api.shape == raw.shape and np.abs(api - raw).max() <= 1
