"""The fault battery, groups "1 prompts" and "2 scene": bad or odd inputs fed to the command line, one row per case,
each asserting what poegen must do (a clear one-line error with its exit code, or the correct success); the exit
codes are those of docs/reliability.md."""
import json

import pytest

from helpers import Case

FAST = ["-q", "--particles", "2", "--steps", "3", "--out", "{tmp}/x.png"]


def gen(prompt):
    return ["generate", prompt, *FAST]


def scene(name="s.yaml"):
    return ["generate", "--scene", "{tmp}/" + name, *FAST]


def meta(folder):
    """The poegen metadata of the written image."""
    from PIL import Image
    return json.loads(Image.open(folder / "x.png").text["poegen"])


def wrote(*experts, absent=()):
    """A check: x.png and x_raw.png exist, and the metadata lists these phrase experts (and none of ``absent``)."""
    def check(folder):
        assert (folder / "x.png").is_file() and (folder / "x_raw.png").is_file()
        names = set(meta(folder)["experts"])
        for e in experts:
            assert any(n == f"shapes[{e}]" or n.startswith(f"shapes[{e} at (") for n in names), names
        for e in absent:
            assert not any(n.startswith(f"shapes[{e}") for n in names), names
    return check


def six_objects(folder):
    wrote("red ball", "blue box", "green wedge", "yellow ball", "magenta box", "cyan wedge")(folder)
    assert meta(folder)["experts"]["shapes[null]"] == pytest.approx(1 - 6 * 2.5)  # -14: the prior divided out


def phrase_experts(n):
    """A check: the image was written with n phrase experts (one per object in view)."""
    def check(folder):
        wrote()(folder)
        assert len([e for e in meta(folder)["experts"] if e != "shapes[null]"]) == n, meta(folder)["experts"]
    return check


def only_vlm_potentials(folder):
    """constraints: [] -- no layout or hard-constraint potential, only the scorer's (its questions and form)."""
    wrote("small red ball")(folder)
    assert all(p.startswith("vlm[") or p == "form" for p in meta(folder)["potentials"]), meta(folder)["potentials"]


GRAMMAR = "as '[a|the] [size] [colour] shape'"
BALL = "{shape: ball, colour: red, position: [0, 1]}"


def one(**fields):
    """A scene spec of one red ball with ``fields`` added to the object (YAML flow values as written)."""
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"objects:\n  - {{shape: ball, colour: red{extra}}}\n"


def ball_with(top):
    """A scene spec of one red ball at (0, 1) with ``top`` (YAML lines) added at the top level."""
    return f"objects:\n  - {BALL}\n{top}"


def balls(n, per_row=5, spacing=1.25):
    """n small balls (1.2 wide) in rows of ``per_row`` from the floor up, each row centred on x = 0."""
    rows = [(i % per_row, i // per_row) for i in range(n)]
    x0 = -spacing * (per_row - 1) / 2
    return "objects:\n" + "".join(f"  - {{name: b{i}, shape: ball, colour: red, position: [{x0 + c * spacing:.3f}, "
                                  f"{0.6 + r * spacing:.3f}]}}\n" for i, (c, r) in enumerate(rows))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # billion laughs: 9**9 x once expanded
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
BOMB_FLOW = "[&a [x, x, x, x, x, x, x, x, x], " + ", ".join(  # the same as one flow list (a position)
    f"&{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in zip("abcdefgh", "bcdefghi")) + "]"


def no_marker(folder):
    assert not (folder / "pwned").exists(), "the YAML tag ran a command"


CASES = {
    # ---- 1 prompts --------------------------------------------------------------------------------------
    "1 prompts: empty ''": Case(gen(""), 2, "prompt: empty"),
    "1 prompts: spaces only": Case(gen("   "), 2, "prompt: empty"),
    "1 prompts: punctuation only '!!!'": Case(gen("!!!"), 2, "empty prompt: name at least one object"),
    "1 prompts: unknown word 'purple'": Case(gen("a purple ball"), 2,
                                             "unknown word 'purple' in prompt 'a purple ball'; the shapes world knows: "),
    "1 prompts: German 'ein roter Ball'": Case(gen("ein roter Ball"), 2, "unknown words 'ein' and 'roter'"),
    "1 prompts: special token '<pad>'": Case(gen("<pad> red ball"), 2, "unknown word 'pad'"),
    "1 prompts: 'A RED Ball!!!' lower-cased": Case(gen("A RED Ball!!!"), 0, "wrote", check=wrote("red ball")),
    "1 prompts: punctuation between phrases": Case(gen("a red, ball; and... a blue box?"), 0, "wrote",
                                                   check=wrote("red ball", "blue box")),
    "1 prompts: hyphen 'a red-ball'": Case(gen("a red-ball"), 0, "wrote", check=wrote("red ball")),
    "1 prompts: emoji dropped": Case(gen("a red ball \U0001f388"), 0, "wrote", check=wrote("red ball")),
    # was: the digit silently dropped; now refused as a count
    "1 prompts: digit 'a red ball 2'": Case(gen("a red ball 2"), 2,
                                            "'2' in prompt 'a red ball 2': write counts as words"),
    # was: `unknown word 'r'` (split at the non-ASCII letter); now the word as typed
    "1 prompts: non-ASCII 'a rëd ball'": Case(gen("a rëd ball"), 2, "unknown word 'rëd'"),
    # was: the whole 3 KB prompt echoed; the harness also checks the line stays under 600 characters
    "1 prompts: 3,000-character prompt": Case(gen(" ".join(["a red ball"] * 300)), 2, GRAMMAR),
    # was: `phrase '' names no shape`; now the missing object is named
    "1 prompts: only 'left of'": Case(gen("left of"), 2, "'left of' in prompt 'left of' needs an object before it"),
    "1 prompts: only 'on'": Case(gen("on"), 2, "'on' in prompt 'on' needs an object before it"),
    "1 prompts: 'a red ball left of' (no 2nd object)": Case(gen("a red ball left of"), 2,
                                                            "'left of' in prompt 'a red ball left of' needs an "
                                                            "object after it"),
    # was: silently one object and an unsatisfiable question
    "1 prompts: self relation 'left of'": Case(gen("a red ball left of a red ball"), 2,
                                               "relates an object to itself"),
    "1 prompts: self relation 'on'": Case(gen("a red ball on a red ball"), 2, "relates an object to itself"),
    "1 prompts: contradictory relations": Case(
        gen("a red ball left of a blue box and a blue box left of a red ball"), 2,
        "'a blue box left of a red ball' contradicts an earlier relation"),
    # was: silently one red ball
    "1 prompts: duplicate 'a red ball and a red ball'": Case(gen("a red ball and a red ball"), 2,
                                                             "names 'a red ball' twice"),
    "1 prompts: 'two red balls'": Case(gen("two red balls"), 0, "wrote", check=phrase_experts(2)),
    "1 prompts: six objects": Case(
        gen("a red ball and a blue box and a green wedge and a yellow ball and a magenta box and a cyan wedge"), 0,
        "wrote", check=six_objects),
    "1 prompts: trailing 'and'": Case(gen("a red ball and"), 2, "empty clause"),
    "1 prompts: 'left' without 'of'": Case(gen("a red ball left a blue box"), 2, "write 'left of'"),
    "1 prompts: two relations in a clause": Case(gen("a red ball on a blue box on a green wedge"), 0, "wrote",
                                                 check=phrase_experts(3)),  # a chain
    "1 prompts: a question 'is there a red ball?'": Case(gen("is there a red ball?"), 2, GRAMMAR),
    "1 prompts: two colours 'a red blue ball'": Case(gen("a red blue ball"), 2, GRAMMAR),
    "1 prompts: two sizes 'a large small ball'": Case(gen("a large small ball"), 2, GRAMMAR),
    "1 prompts: shape only 'a ball'": Case(gen("a ball"), 0, "wrote", check=wrote("ball")),

    # ---- 2 scene ----------------------------------------------------------------------------------------
    "2 scene: malformed YAML (unclosed {)": Case(scene(), 2, "s.yaml: cannot parse",
                                                 files={"s.yaml": "objects:\n  - {shape: ball, colour: red\n"}),
    "2 scene: malformed JSON (trailing comma)": Case(
        scene("s.json"), 2, "s.json: cannot parse",
        files={"s.json": '{"objects": [{"shape": "ball", "colour": "red"},]}'}),
    "2 scene: no objects key": Case(scene(), 2, "scene: missing required field(s) objects",
                                    files={"s.yaml": "physics: {duration: 1}\n"}),
    "2 scene: object without shape": Case(scene(), 2, "objects[0]: missing required field(s) shape",
                                          files={"s.yaml": "objects:\n  - {colour: red}\n"}),
    "2 scene: position '0,1' (string)": Case(scene(), 2, "objects[0].position: expected [x, y], got '0,1'",
                                             files={"s.yaml": one(position='"0,1"')}),
    "2 scene: position [0, 1, 2]": Case(scene(), 2, "objects[0].position: expected [x, y]",
                                        files={"s.yaml": one(position="[0, 1, 2]")}),
    "2 scene: angle '45' (string)": Case(scene(), 2, "objects[0].angle: expected a number, got '45'",
                                         files={"s.yaml": one(angle='"45"')}),
    "2 scene: position [.nan, 1] (YAML)": Case(scene(), 2, "expected a number, got nan",
                                               files={"s.yaml": one(position="[.nan, 1]")}),
    "2 scene: position [NaN, 1] (JSON)": Case(
        scene("s.json"), 2, "expected a number, got nan",
        files={"s.json": '{"objects": [{"shape": "ball", "colour": "red", "position": [NaN, 1]}]}'}),
    "2 scene: position [.inf, 1]": Case(scene(), 2, "expected a number, got inf",
                                       files={"s.yaml": one(position="[.inf, 1]")}),
    # was: PyYAML read 1e308 as a string; now a number, so the object is outside the view
    "2 scene: position [1e308, 1] (YAML)": Case(scene(), 2, "starts outside the camera's view",
                                                files={"s.yaml": one(position="[1e308, 1]")}),
    # was: '1.0e6' read as a string; now a number, and the scene runs. The ball leaves the view, so the image has no
    # phrase expert (prior and layout only); the "did not settle" / "ends outside" warnings go to logging, which
    # pytest's log capture holds, so they are not asserted here
    "2 scene: velocity [1.0e6, 1.0e6] (YAML)": Case(scene(), 0, "wrote",
                                                    files={"s.yaml": one(position="[0, 1]",
                                                                         velocity="[1.0e6, 1.0e6]")},
                                                    check=wrote(absent=["small red ball"])),
    "2 scene: position [1.0e+308, 1]": Case(scene(), 2, "starts outside the camera's view",
                                            files={"s.yaml": one(position="[1.0e+308, 1]")}),
    "2 scene: overlapping box and ball": Case(
        scene(), 2, "objects[0] 'red box' and objects[1] 'blue ball' overlap at their initial positions",
        files={"s.yaml": "objects:\n  - {shape: box, colour: red, size: large, position: [0, 1]}\n"
                         "  - {shape: ball, colour: blue, position: [0.3, 1.5]}\n"}),
    "2 scene: object at x = 10": Case(scene(), 2, "objects[0].position: 'red ball' starts outside the camera's view",
                                      files={"s.yaml": one(position="[10, 1]")}),
    "2 scene: object at y = -5": Case(scene(), 2, "starts below the floor (y < 0); raise y",
                                      files={"s.yaml": one(position="[0, -5]")}),
    "2 scene: size 0": Case(scene(), 2, "objects[0].size: 0 is not one of small, large",
                            files={"s.yaml": one(size=0)}),
    "2 scene: size -1": Case(scene(), 2, "objects[0].size: -1 is not one of small, large",
                             files={"s.yaml": one(size=-1)}),
    "2 scene: unknown key mass": Case(scene(), 2, "objects[0]: unknown field(s) mass; allowed:",
                                      files={"s.yaml": one(mass=3)}),
    "2 scene: objects: []": Case(scene(), 2, "objects: expected a non-empty list of objects",
                                 files={"s.yaml": "objects: []\n"}),
    "2 scene: empty file": Case(scene(), 2, "scene: expected a mapping", files={"s.yaml": ""}),
    # 5 per row, 1.25 apart: four rows fit the 6.4 x 6 view, the fifth (objects[20] on) does not
    "2 scene: 30 small balls": Case(scene(), 2, "objects[20].position: 'b20' starts outside the camera's view",
                                    files={"s.yaml": balls(30)}),
    "2 scene: 20 small balls packed in view": Case(scene(), 0, "wrote", files={"s.yaml": balls(20)},
                                                   check=phrase_experts(20)),
    "2 scene: velocity [1.0e+6, 1.0e+6]": Case(scene(), 0, "wrote",
                                               files={"s.yaml": one(velocity="[1.0e+6, 1.0e+6]")},
                                               check=wrote(absent=["small red ball"])),
    "2 scene: spin 1.0e+9 deg/s": Case(scene(), 0, "wrote", files={"s.yaml": one(spin="1.0e+9")},
                                       check=wrote("small red ball")),
    "2 scene: duration 0": Case(scene(), 2, "physics.duration: 0 is outside (0, 60]",
                                files={"s.yaml": ball_with("physics: {duration: 0}\n")}),
    "2 scene: duration 1.0e+9": Case(scene(), 2, "physics.duration: 1000000000.0 is outside (0, 60]",
                                     files={"s.yaml": ball_with("physics: {duration: 1.0e+9}\n")}),
    "2 scene: duration 60, time_step 0.003 (20,000 steps)": Case(
        scene(), 0, "wrote", files={"s.yaml": ball_with("physics: {duration: 60, time_step: 0.003}\n")},
        check=wrote("small red ball")),
    "2 scene: time_step 1.0e-9": Case(scene(), 2, "more than 20000; shorten the duration or raise the time step",
                                      files={"s.yaml": ball_with("physics: {time_step: 1.0e-9}\n")}),
    # was: a raw tensor-size traceback for every resolution but 32
    "2 scene: camera resolution 33": Case(scene(), 0, "wrote", check=wrote("small red ball"),
                                          files={"s.yaml": ball_with("camera: {resolution: 33}\n")}),
    "2 scene: camera resolution 64": Case(scene(), 0, "wrote", check=wrote("small red ball"),
                                          files={"s.yaml": ball_with("camera: {resolution: 64}\n")}),
    # was: silently truncated to 12, then the traceback
    "2 scene: camera resolution 12.7": Case(scene(), 2, "camera.resolution: 12.7 is not a whole number of pixels",
                                            files={"s.yaml": ball_with("camera: {resolution: 12.7}\n")}),
    "2 scene: camera resolution 7.5": Case(scene(), 2, "camera.resolution: 7.5 is outside [8, 512]",
                                           files={"s.yaml": ball_with("camera: {resolution: 7.5}\n")}),
    "2 scene: camera resolution true": Case(scene(), 2, "camera.resolution: expected a number, got True",
                                            files={"s.yaml": ball_with("camera: {resolution: true}\n")}),
    # was: raw IsADirectoryError / a decode error naming neither file nor fix
    "2 scene: --scene is a directory": Case(["generate", "--scene", "{tmp}/d.yaml", *FAST], 2,
                                            "scene file {tmp}/d.yaml is a folder; name a .yaml or .json file",
                                            files={"d.yaml/keep": ""}),
    "2 scene: --scene is 4 KB of random bytes": Case(scene(), 2, "{tmp}/s.yaml: cannot parse",
                                                     files={"s.yaml": bytes(range(256)) * 16}),
    "2 scene: YAML bomb as top-level keys": Case(scene(), 2, "aliases (*name) are not allowed",
                                                 files={"s.yaml": BOMB}),
    # was: the error message expanded the aliases (GBs, MemoryError)
    "2 scene: YAML bomb under objects[0].position": Case(
        scene(), 2, "aliases (*name) are not allowed",
        files={"s.yaml": one(position=BOMB_FLOW)}),
    "2 scene: !!python/object/apply inside objects": Case(
        scene(), 2, "s.yaml: cannot parse",
        files={"s.yaml": "objects:\n  - !!python/object/apply:os.system ['touch {tmp}/pwned']\n"}, check=no_marker),
    "2 scene: !!python/object/apply as the document": Case(
        scene(), 2, "s.yaml: cannot parse",
        files={"s.yaml": "!!python/object/apply:os.system ['touch {tmp}/pwned']\n"}, check=no_marker),
    "2 scene: two objects with the same default name": Case(
        scene(), 2, "objects[1].name: 'red ball' is used twice; give each object its own name",
        files={"s.yaml": "objects:\n  - {shape: ball, colour: red, position: [-1, 1]}\n"
                         "  - {shape: ball, colour: red, position: [1, 1]}\n"}),
    "2 scene: gravity -9.81": Case(scene(), 2, "physics.gravity: -9.81 is outside [0, 100]",
                                   files={"s.yaml": ball_with("physics: {gravity: -9.81}\n")}),
    "2 scene: hard constraint tolerance 0": Case(
        scene(), 2, "constraints[0].tolerance: 0 is outside (0, inf]",
        files={"s.yaml": ball_with("constraints: [{type: hard, tolerance: 0}]\n")}),
    # was: `constraints[0]: expected a mapping ..., got str` (it iterated the mapping's keys)
    "2 scene: constraints a mapping, not a list": Case(scene(), 2, "constraints: expected a list of {type, weight,"
                                                       " tolerance} mappings (or []), got dict",
                                                       files={"s.yaml": ball_with("constraints: {type: hard}\n")}),
    "2 scene: constraints: []": Case(scene(), 0, "wrote", files={"s.yaml": ball_with("constraints: []\n")},
                                     check=only_vlm_potentials),
    # was: the spec's prompt silently ignored by the shapes world; now one naming other objects is refused
    "2 scene: spec prompt 'a blue box' with a red ball": Case(
        scene(), 2, "scene prompt 'a blue box' names a blue box, which is not among the scene's objects "
                    "(small red ball)", files={"s.yaml": ball_with("prompt: a blue box\n")}),
    # was: AllParticlesDead as a full traceback
    "2 scene: hard constraint tolerance 0.01": Case(
        scene(), 3, "widen a hard constraint's tolerance",
        files={"s.yaml": ball_with("constraints: [{type: hard, tolerance: 0.01}]\n")}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_battery(case, tmp_path, capsys, monkeypatch):
    case.run(tmp_path, capsys, monkeypatch)
