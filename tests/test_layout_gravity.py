"""A layout box in the shapes world gives its object's horizontal place; gravity gives its height (specs.settle)."""
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poegen.layout import Layout, LayoutObject
from poegen.specs import for_shapes, parse_layout, settle

ROOT = Path(__file__).resolve().parents[1]
FLOOR_ROW = 30  # the floor line of a 32 px image (world.FLOOR_FRACTION)


def bottom_row(obj, radius_px):
    """The image row of an object's lowest point from its (settled) box centre and its half height in px."""
    return obj.centre(32)[1] + 0.5 + radius_px


def test_a_floating_ball_is_placed_on_the_floor_under_its_span(caplog):
    layout = parse_layout({"objects": [{"phrase": "a cyan ball", "box": [0.4, 0.1, 0.6, 0.3]}]})
    with caplog.at_level(logging.INFO, logger="poegen.specs"):
        settled = settle(layout)
    (ball,) = settled.objects
    col, row = ball.centre(32)
    assert col == pytest.approx(layout.objects[0].centre(32)[0], abs=0.5)  # the box's horizontal place
    assert bottom_row(ball, 3.0) == pytest.approx(FLOOR_ROW, abs=0.5)  # a small ball (radius 3 px) on the floor
    assert layout.objects[0].box == (0.4, 0.1, 0.6, 0.3)  # the spec's own Layout is not changed
    assert "'a cyan ball' moved down" in caplog.text and "the floor" in caplog.text


def test_one_over_another_object_rests_on_it():
    layout = parse_layout({"objects": [{"phrase": "a large blue box", "box": [0.35, 0.6, 0.65, 0.9375]},
                                       {"phrase": "a small red box", "box": [0.4, 0.05, 0.6, 0.25]}]})
    box, top = settle(layout).objects
    assert box.box == layout.objects[0].box  # already on the floor: unchanged
    # the small box (3 px half side) on the large box's top (10 px above the floor)
    assert bottom_row(top, 3.0) == pytest.approx(FLOOR_ROW - 10, abs=0.7)
    assert top.centre(32)[0] == pytest.approx(layout.objects[1].centre(32)[0], abs=0.5)


def test_objects_already_resting_keep_their_boxes():
    spec = {"objects": [{"phrase": "a large green box", "box": [0.05, 0.625, 0.35, 0.9375]},
                        {"phrase": "a small yellow ball", "box": [0.6, 0.75, 0.8, 0.9375]}]}
    layout = parse_layout(spec)
    assert [o.box for o in settle(layout).objects] == [o.box for o in layout.objects]
    twice = settle(settle(parse_layout({"objects": [{"phrase": "a red ball", "box": [0.1, 0.1, 0.4, 0.4]}]})))
    assert twice.objects[0].box == settle(parse_layout(
        {"objects": [{"phrase": "a red ball", "box": [0.1, 0.1, 0.4, 0.4]}]})).objects[0].box  # settled stays


def test_only_boxed_shapes_world_layouts_settle():
    unboxed = Layout("", [LayoutObject("a red ball")])
    assert settle(unboxed) is unboxed
    assert for_shapes(parse_layout({"objects": [{"phrase": "a red ball", "box": [0.1, 0.1, 0.4, 0.4]}]})) \
        .objects[0].box[1] > 0.5  # the shapes world's reading moves it down


def test_readme_layout_example_is_drawn_exactly(tmp_path):
    from poegen.cli import main
    from poegen.experts.shapes.checker import exactly
    from poegen.specs import load_layout
    from poegen.compare import judge_layout

    out = tmp_path / "layout.png"
    spec = ROOT / "examples" / "layout_two_objects.yaml"
    assert main(["generate", "--layout", str(spec), "--seed", "0", "--threads", "1", "-q", "--out", str(out)]) == 0
    raw = np.asarray(Image.open(tmp_path / "layout_raw.png").convert("RGB"), dtype=np.float32)
    image = raw.transpose(2, 0, 1) / 127.5 - 1
    assert judge_layout(image, for_shapes(load_layout(spec)))["exact"]
    from poegen.experts.shapes.vocab import parse_phrase
    assert exactly(image, [parse_phrase("a red ball"), parse_phrase("a blue box")])
