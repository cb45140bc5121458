import json
from pathlib import Path

import pytest

from poegen.experts.scene import SceneError, load_scene, parse_scene, simulate_scene

EXAMPLES = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("examples").glob("*.yaml")
                  if not p.name.startswith("layout_"))  # the scene specs (layout_* are layout specs)


def ball_on_box(**ball):
    return {"objects": [{"name": "box", "shape": "box", "colour": "blue", "size": "large", "position": [0.0, 1.0]},
                        {"name": "ball", "shape": "ball", "colour": "red", "position": [0.05, 3.5], **ball}]}


def test_examples_load_and_simulate():
    assert len(EXAMPLES) >= 6
    for path in EXAMPLES:
        spec = load_scene(path)
        scene = simulate_scene(spec)
        assert len(scene.objects) == len(spec.objects)


def test_dropped_ball_settles_on_the_box():
    scene = simulate_scene(parse_scene(ball_on_box()))
    box, ball = scene.objects
    assert scene.on(1, 0) and scene.settled
    assert ball.y == pytest.approx(2.0 + 0.6, abs=0.05)  # box top (2.0) plus the ball's radius
    assert abs(ball.x - box.x) < 1.0


def test_json_and_yaml_agree(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(ball_on_box()))
    assert load_scene(tmp_path / "s.json") == parse_scene(ball_on_box())


@pytest.mark.parametrize("change,match", [
    ({"colour": "purple"}, r"objects\[1\]\.colour: 'purple' is not one of red"),
    ({"shape": "cone"}, r"objects\[1\]\.shape: 'cone' is not one of ball, box, wedge"),
    ({"position": [0.0]}, r"objects\[1\]\.position: expected \[x, y\]"),
    ({"position": [0.0, 1.2]}, r"overlap at their initial positions"),
    ({"position": [9.0, 1.0]}, r"outside the camera's view"),
    ({"position": [0.0, -1.0]}, r"below the floor"),
    ({"mass": 3}, r"objects\[1\]: unknown field\(s\) mass; allowed: name, shape"),
])
def test_bad_objects_name_the_field(change, match):
    with pytest.raises(SceneError, match=match):
        parse_scene(ball_on_box(**change))


def test_bad_physics_and_top_level():
    with pytest.raises(SceneError, match=r"physics.duration: -1 is outside"):
        parse_scene({**ball_on_box(), "physics": {"duration": -1}})
    with pytest.raises(SceneError, match="steps, more than"):
        parse_scene({**ball_on_box(), "physics": {"duration": 60, "time_step": 0.0001}})
    with pytest.raises(SceneError, match="missing required field"):
        parse_scene({"physics": {}})
    with pytest.raises(SceneError, match=r"scene: unknown field\(s\) lights"):
        parse_scene({**ball_on_box(), "lights": 1})


def test_unparseable_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objects: [unclosed")
    with pytest.raises(SceneError, match="bad.yaml: cannot parse"):
        load_scene(bad)
