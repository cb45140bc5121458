"""One route from a job's inputs to its Products: read once, in order (specs -> one Layout -> families -> Product),
and `poegen compare` builds its targets through the pipeline's own ``build``."""
import collections
import sys

import pytest

import poegen.experts.registry as registry
import poegen.experts.scene as scene
import poegen.experts.shapes.prompt as shapes_prompt
import poegen.specs as specs
from poegen import compare, pipeline
from poegen.job import Job

READERS = {shapes_prompt.parse_prompt: "parse_prompt", specs.split_prompt: "split_prompt",
           specs.motion_scene: "motion_scene", scene.load_scene: "load_scene", scene.parse_scene: "parse_scene",
           registry.load_config: "load_config"}


def reads(job: Job):
    """How often building the job's Products entered each reader, and how often with the job's whole prompt."""
    codes = {f.__code__: name for f, name in READERS.items()}
    counts = collections.Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            name = codes[frame.f_code]
            first = frame.f_locals.get(frame.f_code.co_varnames[0])
            counts[name + (" of the prompt" if job.prompt is not None and first == job.prompt else "")] += 1

    sys.setprofile(profile)
    try:
        built = pipeline.products(job)
    finally:
        sys.setprofile(None)
    return counts, built


@pytest.mark.parametrize("fields, expected", [
    ({"prompt": "a red ball on a blue box"}, {"parse_prompt of the prompt": 1}),
    # a motion prompt: the verb's two sides parsed, the scene they make read once, the prompt no more
    ({"prompt": "a red ball rolls off a blue box", "video": "gif", "frames": 2},
     {"motion_scene of the prompt": 1, "parse_prompt": 2, "parse_scene": 1}),
    ({"prompt": "a red ball and a blue box", "video": "gif", "frames": 2},
     {"motion_scene of the prompt": 1, "parse_prompt of the prompt": 1}),
    # a scene: its file read once; its own prompt checked against its objects
    ({"scene": "examples/stacking.yaml"}, {"load_scene": 1, "parse_scene": 1, "parse_prompt": 1}),
])
def test_a_generate_job_reads_its_prompt_and_its_scene_once(fields, expected):
    counts, built = reads(Job.from_dict(fields, "job"))
    assert len(built) == 1
    assert dict(counts) == expected


def test_compare_builds_its_products_through_the_pipelines_build(monkeypatch):
    """A comparison target's Product is the one `poegen generate` builds for the same prompt and weights."""
    made = []
    build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: made.append(build(*a, **k)) or made[-1])
    compare._init_worker(0)
    product, _, _ = compare._target("a green wedge left of a yellow ball", 2.0, 1.5)
    assert made == [product]
    (_, generated), = pipeline.products(Job.from_dict(
        {"prompt": "a green wedge left of a yellow ball", "guidance": 2.0, "potential_weight": 1.5}, "job"))
    assert (product.names, product.weights) == (generated.names, generated.weights)
    assert (product.potential_names, product.lambdas) == (generated.potential_names, generated.lambdas)
