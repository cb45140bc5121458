import pytest

from poegen.cli import main
from poegen.experts.shapes.prompt import parse_prompt
from poegen.experts.shapes.vocab import Phrase


def test_objects_and_relations():
    p = parse_prompt("A green wedge left of a yellow ball and a red box")
    assert p.objects == [Phrase("green", "wedge"), Phrase("yellow", "ball"), Phrase("red", "box")]
    assert p.relations == [(0, "left", 1)]
    assert p.questions() == ["is there a green wedge?", "is there a yellow ball?", "is there a red box?",
                             "is the green wedge left of the yellow ball?"]


def test_a_phrase_in_two_relations_is_one_object_but_a_bare_repeat_is_refused():
    p = parse_prompt("a red ball on a blue box and a red ball left of a green wedge")
    assert len(p.objects) == 3 and p.relations == [(0, "on", 1), (0, "left", 2)]
    with pytest.raises(ValueError, match="names 'a red ball' twice"):  # a second red ball cannot be drawn apart
        parse_prompt("a red ball on a blue box and a red ball")


@pytest.mark.parametrize("text,match", [
    ("a purple ball", r"unknown word 'purple'.*red, green, blue"),
    ("a red ball left a blue box", "left of"),
    ("and a red ball", "empty clause"),
    ("", "empty prompt"),
    ("a red", "names no shape"),
])
def test_prompt_errors_are_clear(text, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt(text)


def test_cli_reports_prompt_errors(capsys):
    assert main(["generate", "a purple ball", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown word 'purple'" in err and "knows: " in err


def test_every_unknown_word_is_named_with_prompts_that_work(capsys):
    """All unknown words in one message (not one per run), a near spelling suggested, and examples that parse."""
    from poegen.experts.shapes.prompt import EXAMPLE

    assert main(["generate", "a purple sphere and a blu box", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown words 'purple', 'sphere' and 'blu' in prompt 'a purple sphere and a blu box'" in err
    assert "'blu': did you mean 'blue'?" in err and "'sphere': did you mean" not in err
    assert f"e.g. {EXAMPLE}" in err
    for example in EXAMPLE.strip("'").split("', '"):
        parse_prompt(example)


@pytest.mark.parametrize("prompt,fixes", [
    ("a red ball on two blue boxes", ["a red ball on a blue box", "a red ball and two blue boxes"]),
    ("a red ball on blue boxes", ["a red ball on a blue box"]),
    ("a red ball on no box", ["a red ball on a box"]),
    ("a green ball on a red box left of three small wedges",
     ["a green ball on a red box left of a small wedge", "a green ball and a red box and three small wedges"]),
])
def test_a_counted_object_in_a_relation_is_explained_with_prompts_that_work(prompt, fixes, capsys):
    """A count inside a relation: the message says relations join single objects (not "needs a count") and offers
    the relation with one object and the count without the relation, each of which parses."""
    with pytest.raises(ValueError) as e:
        parse_prompt(prompt)
    message = str(e.value)
    assert "a relation" in message and "joins single objects, not counted or absent ones" in message
    assert "needs a count" not in message
    assert message.endswith("e.g. " + " or ".join(repr(f) for f in fixes)), message
    for fix in fixes:
        parse_prompt(fix)
    assert main(["generate", prompt, "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"poegen: error: {message.split(':')[0]}")


def test_generate_writes_upscaled_and_raw_png(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "img.png"
    assert main(["generate", "a red ball left of a blue box", "--steps", "2", "--particles", "2", "--quiet",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (256, 256)
    assert Image.open(tmp_path / "img_raw.png").size == (32, 32)
    assert str(out) in capsys.readouterr().out


def test_prompt_product_uses_composable_weights():
    from poegen.families import shapes_prompt_product as build_product

    product = build_product("a red ball and a blue box", guidance=2.0)
    assert product.weights == [-3.0, 2.0, 2.0]  # null^(1 - 2w) * red^w * blue^w
    assert product.names[0] == "shapes[null]"
    assert product.potential_names == ["vlm[is there a red ball?]", "vlm[is there a blue box?]",
                                       "vlm[are there one balls?]", "vlm[are there one boxes?]",
                                       "vlm[are there zero wedges?]",  # the counts ask for nothing else
                                       "form",  # every object well formed
                                       "footprint"]  # and nothing is drawn away from the placed objects
    from poegen.experts.shapes.prompt import COUNT_WEIGHT, FORM_WEIGHT, GUIDANCE, VLM_WEIGHT

    default = build_product("a red ball")
    assert default.weights == [1 - GUIDANCE, GUIDANCE]
    assert default.lambdas == [VLM_WEIGHT] + [VLM_WEIGHT * COUNT_WEIGHT] * 3 + [VLM_WEIGHT * FORM_WEIGHT, 1.0]
    assert VLM_WEIGHT * FORM_WEIGHT == 1.0  # the form's weight as tuned; the footprint's: one object is placed
    assert default.potential_names[-1] == "footprint" and default.names[-1] == "shapes[red ball at (16.0, 27.0)]"


def test_phrase_experts_share_one_forward_and_match_separate_calls():
    import torch

    from poegen.experts.shapes import load_prior

    prior = load_prior()
    experts = [prior.null(), prior.expert("red ball"), prior.expert("blue box", position=(8, 26))]
    calls = []
    handle = prior.net.register_forward_hook(lambda *a: calls.append(1))
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor(0.7)
    batched = type(experts[0]).denoise_batch(experts, x, sigma)
    assert len(calls) == 1
    handle.remove()
    for e, b in zip(experts, batched):
        assert torch.allclose(e.denoise(x, sigma), b, atol=1e-5)


def test_product_to_moves_every_module_and_tensor():
    import torch

    from poegen.experts.physics import PhysicsExpert
    from poegen.experts.shapes import load_prior, load_vlm
    from poegen.families import shapes_prompt_product as build_product, shapes_scene_product as build_scene_product
    from poegen.experts.scene import load_scene

    prior, vlm = load_prior(), load_vlm()
    scene = build_scene_product(PhysicsExpert(load_scene("examples/stacking.yaml")), prior=prior)
    for product in (build_product("a red ball left of a blue box", prior=prior, vlm=vlm), scene):
        product.to("meta")  # a device without data: every tensor it can reach must have moved
        left = [(type(o).__name__, k) for o in product.experts + product.potentials for k, v in vars(o).items()
                if isinstance(v, torch.Tensor) and v.device.type != "meta"]
        assert not left
    assert all(p.device.type == "meta" for p in [*prior.net.parameters(), *vlm.net.parameters()])


def test_generate_refuses_a_bad_device(capsys):
    assert main(["generate", "a red ball", "--device", "gpu0", "-q"]) != 0
    assert "device 'gpu0'" in capsys.readouterr().err


def test_gradient_guidance_through_the_shapes_prior_and_scorer():
    import torch

    import poegen
    from poegen.families import shapes_prompt_product as build_product

    product = build_product("a red ball left of a blue box")
    nfe = {}
    for gg in (0.0, 2.0):
        before = dict(product.nfe)
        r = poegen.sample(product, num_particles=4, num_steps=3, generator=torch.Generator().manual_seed(0),
                          mcmc_steps=0, grad_guidance=gg)
        assert torch.isfinite(r.x).all() and torch.isfinite(r.log_w).any()
        nfe[gg] = {k: v - before[k] for k, v in product.nfe.items()}
    # guidance differentiates through one more product evaluation per level
    assert all(nfe[2.0][n] == nfe[0.0][n] + 3 * 4 for n in product.names)


@pytest.mark.parametrize("prompt,message", [
    ("two red ball", r"a count above one takes the plural, e.g. 'two red balls'"),
    ("a red ball and 2 blue boxes", r"'2' in prompt 'a red ball and 2 blue boxes': write counts as words"),
    ("red balls", r"'balls' in prompt 'red balls' needs a count \(one to four\) or 'no'"),
    ("two balls on a box", r"'two balls' in prompt 'two balls on a box': a relation \(on\) joins single objects, not "
                           r"counted or absent ones; e.g. 'a ball on a box' or 'two balls and a box'"),
    ("a ball and no ball", r"asks for a ball and for no ball"),
    ("a red box and no red objects", r"asks for a red box and for no red objects"),
    ("two red balls and two red balls", r"names red ball twice; say how many once"),
    ("no wedges", r"names no object to draw"),
    ("zero balls and a box", r"'zero' in prompt .*: say 'no balls'"),
    ("a red ball and a red ball", r"names 'a red ball' twice"),
    ("a red ball left of a red ball", r"relates an object to itself"),
    ("a red ball left of a blue box and a red ball right of a blue box", r"contradicts an earlier relation"),
    ("a red ball on a blue box and a blue box on a red ball", r"contradicts an earlier relation"),
    ("a rëd ball", r"unknown word 'rëd'"),
])
def test_prompts_that_cannot_be_drawn_as_asked_are_refused(prompt, message):
    from poegen.experts.shapes.prompt import parse_prompt

    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)
    # a phrase reused across relations is one object, as before
    assert len(parse_prompt("a red ball on a blue box and a red ball left of a green wedge").objects) == 3


def test_placement_puts_objects_apart_and_keeps_the_relations():
    from poegen.experts.shapes.prompt import FLOOR_ROW, RELATION_WEIGHT, Prompt, parse_prompt, placement
    from poegen.families import shapes_prompt_product as build_product

    assert placement(parse_prompt("a red ball")) == [(16.0, FLOOR_ROW)]  # one object: the middle of the floor
    (c0, r0), (c1, r1) = placement(parse_prompt("a green wedge right of a yellow box"))
    assert c0 > c1 + 8 and r0 == r1 == FLOOR_ROW
    (c0, r0), (c1, r1) = placement(parse_prompt("a red ball on a blue box"))
    assert c0 == c1 and r0 < r1 == FLOOR_ROW
    places = placement(parse_prompt("a red ball on a blue box and a green wedge left of a blue box"))
    assert places[2][0] < places[1][0] == places[0][0]  # the wedge left of the box, the ball above it
    cols = [c for c, _ in placement(parse_prompt("a red ball and a blue box and a green wedge"))]
    assert cols == sorted(cols) and min(b - a for a, b in zip(cols, cols[1:])) >= 7
    # no arrangement satisfies these: the objects stay unplaced rather than misplaced
    three = parse_prompt("a red ball and a blue box and a green wedge").objects
    assert placement(Prompt(three, [(0, "on", 1), (1, "on", 2), (2, "on", 0)])) is None
    assert placement(Prompt(three, [(0, "on", 2), (1, "on", 2)])) is None  # two on one
    assert placement(parse_prompt("a red ball left of a blue box and a green wedge on a red ball and "
                                  "a blue box left of a green wedge")) is None
    product = build_product("a red ball left of a blue box", potential_weight=1.0)
    assert dict(zip(product.potential_names, product.lambdas))["vlm[is the red ball left of the blue box?]"] == \
        RELATION_WEIGHT
    assert product.names == ["shapes[null]", "shapes[red ball at (10.7, 27.0)]", "shapes[blue box at (21.3, 27.0)]"]


def test_counts_lists_chains_and_absences_parse():
    """Issue 25's grammar: counts with plurals, several objects joined by commas, chained relations (a later
    clause naming an earlier object again), and absences."""
    red, blue = Phrase("red", "ball"), Phrase("blue", "box")
    p = parse_prompt("two red balls and a blue box")
    assert p.objects == [red, red, blue] and p.relations == [] and p.absent == []
    assert p.object_questions() == ["is there a red ball?", "is there a blue box?"]  # one question per phrase
    assert parse_prompt("a red box, a cyan ball and a yellow wedge").objects == [
        Phrase("red", "box"), Phrase("cyan", "ball"), Phrase("yellow", "wedge")]
    assert parse_prompt("a red, ball").objects == [red]  # a comma inside a phrase is dropped, as before
    chain = parse_prompt("a green ball on a red box on a blue box")
    assert chain.relations == [(0, "on", 1), (1, "on", 2)] and len(chain.objects) == 3
    assert chain.relation_questions() == ["is the green ball on the red box?", "is the red box on the blue box?"]
    two = parse_prompt("a magenta wedge left of a green box and the green box left of a blue ball")
    assert two.relations == [(0, "left", 1), (1, "left", 2)] and len(two.objects) == 3
    neg = parse_prompt("a yellow wedge and no ball")
    assert neg.objects == [Phrase("yellow", "wedge")] and neg.absent == [Phrase(shape="ball")]
    assert parse_prompt("a box, no red objects").absent == [Phrase(colour="red")]
    assert parse_prompt("one red ball").objects == [red]


def test_counted_and_chained_objects_are_placed_apart_and_counted():
    from poegen.experts.shapes.prompt import FLOOR_ROW, STACK_ROWS, count_questions, placement

    p = parse_prompt("two red balls and a blue box")
    cols = [c for c, _ in placement(p)]
    assert len(set(cols)) == 3  # three floor slots: the two red balls are not drawn over each other
    assert count_questions(p.objects) == ["are there two balls?", "are there one boxes?", "are there zero wedges?"]
    rows = [r for _, r in placement(parse_prompt("a green ball on a red box on a blue box"))]
    assert rows == [FLOOR_ROW - 2 * STACK_ROWS, FLOOR_ROW - STACK_ROWS, FLOOR_ROW]  # a stack of three


def test_a_large_object_is_placed_where_a_large_centre_sits():
    from poegen.experts.shapes.prompt import FLOOR_ROW, LARGE_LIFT, STACK_ROWS, placement

    rows = [r for _, r in placement(parse_prompt("a large blue ball left of a small red ball"))]
    assert rows == [FLOOR_ROW - LARGE_LIFT, FLOOR_ROW]
    rows = [r for _, r in placement(parse_prompt("a small red ball on a large blue box"))]
    assert rows == [FLOOR_ROW - LARGE_LIFT - STACK_ROWS - LARGE_LIFT, FLOOR_ROW - LARGE_LIFT]
