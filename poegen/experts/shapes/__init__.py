"""The embedded shapes world: scenes, renderer, checker, tokenizer, prior (generative) and VLM (discriminative) experts.

    from poegen.experts.shapes import load_prior, load_vlm
    prior = load_prior()                                  # weights/prior.safetensors
    red_ball = prior.expert("red ball")                   # p(image | a red ball somewhere)
    left_box = prior.expert("blue box", position=(8, 26)) # ... with its centroid at pixel (col, row)
    null = prior.null()                                   # unconditional prior
    video = load_video_prior()                            # weights/video.safetensors: clips' space-time correction
    vlm = load_vlm().expert("is the red ball on the blue box?")   # log P(yes) per image
"""

from .checker import Detection, detect
from .model import ShapesPhraseExpert, ShapesPrior, load_prior
from .render import render, world_to_pixel
from .video import TemporalNet, load_video_prior
from .question_sampler import random_question
from .questions import parse_question
from .scorer import ShapesVLMExpert, load_vlm
from .truth import answer_detections, answer_scene
from .vocab import Phrase, encode, parse_phrase
from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES, Scene, SceneObject, random_scene, simulate

__all__ = [
    "Detection", "detect", "ShapesPhraseExpert", "ShapesPrior", "load_prior", "render", "world_to_pixel",
    "ShapesVLMExpert", "answer_detections", "answer_scene", "load_vlm", "parse_question", "random_question",
    "Phrase", "encode", "parse_phrase", "COLOUR_NAMES", "SHAPES", "SIZE_NAMES", "Scene", "SceneObject",
    "random_scene", "simulate", "TemporalNet", "load_video_prior",
]
