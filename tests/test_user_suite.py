"""The user suite (poegen/experts/shapes/usersuite.py) and `poegen eval user`, which judges it per route."""
import json
from pathlib import Path

import pytest
import yaml

from poegen.cli import main
from poegen.experts.shapes import usersuite

ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_has_sixty_inputs_on_every_route_with_unique_ids():
    inputs = usersuite.INPUTS
    assert len(inputs) >= 60
    assert {i["route"] for i in inputs} == set(usersuite.ROUTES)
    ids = [i["id"] for i in inputs]
    assert len(set(ids)) == len(ids)
    assert all(i["id"].startswith(i["route"] + "/") and i["expect"] for i in inputs)
    texts = [i["target"] for i in inputs if isinstance(i["target"], str)]
    assert len(set(texts)) == len(texts)  # compare.run refuses a target named twice
    assert not any("check" in i for i in inputs)  # the suite judges what it samples
    counts = {r: sum(i["route"] == r for i in inputs) for r in usersuite.ROUTES}
    assert min(counts.values()) >= 5, counts


def test_every_input_parses_and_every_spec_loads(tmp_path):
    from poegen.evaluate import write_user_targets
    from poegen.experts.shapes.prompt import parse_prompt
    from poegen.specs import load_target, motion_scene, spec_kind

    targets = write_user_targets(usersuite.INPUTS, tmp_path)
    assert set(targets) == {i["id"] for i in usersuite.INPUTS}
    for inp in usersuite.INPUTS:
        route, target = inp["route"], targets[inp["id"]]
        if route in ("prompt", "relation"):
            p = parse_prompt(target)
            assert bool(p.relations) == (route == "relation"), inp["id"]
            assert motion_scene(target) is None
        elif route == "clip":
            assert motion_scene(target) is not None
        else:
            assert spec_kind(target) == route, inp["id"]
        layout = load_target(target, shapes=True, video=route == "clip")
        assert layout.objects, inp["id"]
    above = [i for i in usersuite.INPUTS if " above " in str(i["target"]) or " below " in str(i["target"])]
    assert len(above) >= 4


@pytest.mark.parametrize("inp", [i for i in usersuite.INPUTS if "source" in i], ids=lambda i: i["id"])
def test_copies_of_repository_examples_match_them(inp):
    data = yaml.safe_load((ROOT / inp["source"]).read_text())
    target = inp["target"]
    if inp["route"] == "edit":
        assert target["scene"]["objects"] == data["objects"]
    else:
        assert {k: v for k, v in target.items() if k in data} == data and set(target) <= set(data) | {"physics"}


def test_the_edit_example_image_is_the_rendered_scene(tmp_path):
    """The drop_ball copy renders the same picture as examples/edits/box.png."""
    import numpy as np
    from PIL import Image

    from poegen.evaluate import write_user_targets

    inp = next(i for i in usersuite.INPUTS if i["id"] == "edit/drop_ball_example")
    spec = json.loads(Path(write_user_targets([inp], tmp_path)[inp["id"]]).read_text())
    made = np.asarray(Image.open(tmp_path / spec["image"]).convert("RGB"), dtype=int)
    given = np.asarray(Image.open(ROOT / "examples" / "edits" / "box.png").convert("RGB"), dtype=int)
    assert np.abs(made - given).max() <= 2


def test_select_routes_and_ids():
    assert {i["route"] for i in usersuite.select(["edit", "clip"])} == {"edit", "clip"}
    assert [i["id"] for i in usersuite.select(ids=["layout/readme_two_objects"])] == ["layout/readme_two_objects"]
    assert all(i["route"] == "scene" for i in usersuite.select(ids=["scene"]))
    with pytest.raises(ValueError, match="unknown route 'layouts'"):
        usersuite.select(["layouts"])
    with pytest.raises(ValueError, match="no input 'prompt/nothing'"):
        usersuite.select(ids=["prompt/nothing"])


def test_eval_user_judges_per_route_and_lists_misses_with_reasons(tmp_path, capsys, monkeypatch):
    """A tiny run on three inputs (a prompt, a layout, an edit) plus one whose checker is told to expect something
    the sampled prompt does not draw: the per-route lines, and that input listed as a miss with the reason."""
    wrong = {"id": "prompt/wrong_on_purpose", "route": "prompt", "target": "a green ball", "check": "a blue box",
             "expect": "a blue box (the green ball sampled is a miss)"}
    monkeypatch.setattr(usersuite, "INPUTS", usersuite.INPUTS + [wrong])
    out = tmp_path / "run"
    assert main(["eval", "user", "--ids", "prompt/red_ball,layout/floating_cyan_ball,edit/ball_beside_box,"
                 "prompt/wrong_on_purpose", "--seeds", "1", "--particles", "2", "--steps", "4", "-q",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[lines.index(next(l for l in lines if l.startswith("route")))].split() == ["route", "sampler",
                                                                                          "strict", "n"]
    for route, n in (("prompt", 2), ("layout", 1), ("edit", 1), ("all", 4)):
        row = next(l.split() for l in lines if l.startswith(route + " "))
        assert row[1] == "poe" and row[3] == str(n) and 0 <= float(row[2]) <= 1
    assert "user_poe_strict=" in printed and "(n=4)" in printed
    miss = next(l for l in lines if "prompt/wrong_on_purpose seed 0:" in l)
    assert "missing blue box" in miss and "saw:" in miss
    rows = json.loads((out / "rows.json").read_text())
    assert {r["id"] for r in rows} >= {"prompt/wrong_on_purpose", "edit/ball_beside_box"}
    assert next(r for r in rows if r["id"] == "prompt/wrong_on_purpose")["exact"] is False
    assert (out / "misses" / "prompt__wrong_on_purpose_poe_seed0.png").is_file()
    # --report prints the same table from the saved rows
    assert main(["eval", "user", "--report", str(out)]) == 0
    again = capsys.readouterr().out
    assert next(l for l in again.splitlines() if l.startswith("all ")) == next(l for l in lines if l.startswith("all "))
    assert miss in again.splitlines()


def test_eval_user_refuses_bad_routes_in_one_line(capsys):
    assert main(["eval", "user", "--routes", "prompts", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown route 'prompts'" in err and len(err.strip().splitlines()) == 1


def test_eval_user_runs_at_a_jobs_defaults(monkeypatch):
    """The suite measures what a user gets: the default budget of `poegen generate`, and it follows a change."""
    import argparse

    from poegen import defaults, samplers
    from poegen.evaluate import add_parsers

    def parsed(*argv):
        ap = argparse.ArgumentParser()
        add_parsers(ap)
        return ap.parse_args(["user", *argv])

    args = parsed()
    assert (args.samplers, args.seeds, args.particles, args.steps, args.mcmc_steps, args.frames) == \
        ("poe", 2, defaults.PARTICLES, defaults.STEPS, samplers.PRESETS["poe"]["mcmc_steps"], 5)
    monkeypatch.setattr(defaults, "PARTICLES", 13)
    monkeypatch.setattr(defaults, "STEPS", 7)
    assert (parsed().particles, parsed().steps) == (13, 7)
    assert parsed("--routes", "layout,edit", "--ids", "scene").routes == "layout,edit"
