"""The one dispatch from a Layout to a Product: the embedded shapes world when no model is named, else the named
models of the registry (``--expert``, ``--potential``, a config), each family composing the Layout the same way:
regional phrase experts on one shared backbone, one question per object and relation on one shared scorer, and a
layout potential where boxes or simulated masks exist. Heavy model code is imported only when a family is built."""
from __future__ import annotations

import json
import logging
from typing import List, Optional, Sequence, Union

from . import defaults
from .experts.cache import cached
from .experts.registry import (GENERATIVE, GENERATIVE_FIELDS, OPTIONS, POTENTIAL_FIELDS, POTENTIALS, TUNING, VIDEO,
                               Spec, _entry)
from .experts.shapes.prompt import (COUNT_WEIGHT, FORM_WEIGHT, GUIDANCE, REGION_PX, RELATION_WEIGHT, VLM_WEIGHT, Prompt,
                                    _check_scene_prompt, count_questions)
from .experts.shapes.vocab import parse_phrase
from .hardware import configure_threads
from .layout import Layout, check_relations
from .product import PerFrame, Product, merge_experts
from .specs import clip_seconds, for_shapes, from_physics, from_prompt, shapes_layout

log = logging.getLogger("poegen.families")


def build_product(layout: Layout, experts=(), potentials=(), *, guidance: Optional[float] = None,
                  potential_weight: Optional[float] = None, dtype: str = "auto", video: bool = False,
                  frames: Optional[int] = None, fps: Optional[float] = None, video_inputs: Optional[dict] = None,
                  **shapes_options):
    """The Product of a Layout in its family: the named models in ``experts`` and ``potentials`` (registry
    entries; guidance and lambdas default to 1), or the embedded shapes world when none is named (its tuned
    defaults; ``shapes_options``: prior, vlm, schedule, and the ablations ``place``, ``counts`` and
    ``footprint``). ``dtype`` (auto, float32, bfloat16): the shapes prior's compute dtype (auto: bf16 only
    where the hardware has it natively, ``hardware.pick_dtype``), or the named models' torch_dtype where an entry
    gives none (auto: as loaded). An edit's ``Edit`` is kept as ``product.edit``. ``video``: clips of ``frames``
    frames (None: the model's default) from video kinds (``registry.VIDEO``), every potential scoring each frame,
    played at ``fps`` (None: the frames over the simulated duration, else the model's); ``video_inputs``: files
    every video entry takes as its options (first_frame, control). A scene's Layout (``layout.physics``) with
    video kinds: ``scene_video_product``. Torch's threads are picked as the CLI picks
    them (``hardware.configure_threads``) unless the caller set them."""
    configure_threads()
    if video and not experts and not potentials:  # the shapes world in motion: the image prior per frame
        layout = for_shapes(layout, video=True, place=shapes_options.pop("place", True),
                            seconds=clip_seconds(frames, fps))
        product = shapes_video_product(layout, frames=frames, fps=fps, guidance=guidance,
                                       potential_weight=potential_weight, dtype=dtype, **shapes_options)
    elif experts and video and layout.physics is not None:  # physics over time on named video models
        product = scene_video_product(layout, experts, potentials, guidance=_or(guidance, defaults.MODEL_GUIDANCE),
                                      lambdas=_or(potential_weight, defaults.MODEL_POTENTIAL_WEIGHT), dtype=dtype,
                                      frames=frames, fps=fps, video_inputs=video_inputs)
    elif experts:
        check_relations(layout)
        product = named_product(layout, experts, potentials, guidance=_or(guidance, defaults.MODEL_GUIDANCE),
                                lambdas=_or(potential_weight, defaults.MODEL_POTENTIAL_WEIGHT), dtype=dtype,
                                video=video, frames=frames, video_inputs=video_inputs)
    elif potentials:
        raise ValueError("--potential needs --expert or --config: the shapes world asks its own scorer "
                         "(weight it with --potential-weight)")
    else:
        if layout.objects and layout.prompt.strip() and layout.physics is None and layout.edit is None:
            log.warning(
                "the shapes world draws the layout's objects and has no background: its prompt %r is not used",
                layout.prompt[:60])
        layout = for_shapes(layout, place=shapes_options.pop("place", True))  # a bare prompt's Layout read here
        check_relations(layout, f"prompt {layout.text[:60]!r}" if layout.text is not None else "relations")
        product = shapes_product(layout, guidance=guidance, potential_weight=potential_weight, dtype=dtype,
                                 **shapes_options)
    product.edit = layout.edit  # an edit's image and mask ride along (metrics, replace_known)
    return product


def _or(value: Optional[float], default: float) -> float:
    """A weight the job gave, else the family's default (``poegen.defaults``)."""
    return default if value is None else value


# ---- the named models (poegen.experts.registry's kinds) ----------------------------------------------------

def _with_dtype(entry: dict, dtype: str) -> dict:
    """``entry`` with ``torch_dtype: dtype`` added when dtype is explicit, its kind takes one and it names none."""
    if dtype == "auto" or "torch_dtype" in entry["options"] or "torch_dtype" not in OPTIONS.get(entry["kind"], ()):
        return entry
    return dict(entry, options={**entry["options"], "torch_dtype": dtype})


def named_product(layout, experts: Sequence[Spec], potentials: Sequence[Spec] = (), *, guidance: float = 1.0,
                  lambdas: float = 1.0, dtype: str = "auto", video: bool = False, frames: Optional[int] = None,
                  fps: Optional[float] = None, video_inputs: Optional[dict] = None, extra: Sequence = ()) -> Product:
    """The Product of named experts for a Layout (or a prompt): on each generative entry's model, the background
    prompt's expert outside the objects' regions, each located object's phrase inside its region, each unlocated
    object's phrase everywhere (composable diffusion), and the empty prompt's expert to make guidance a product;
    each potential entry asks one question per object and relation (a detector: one per object and its box).

    Entries are 'kind:path' or config mappings (``kind``, ``path``, optional ``prompt`` (a fixed prompt instead of
    the layout), ``guidance``, ``weight`` (a factor on its expert weights, or its lambda) and ``options``). Entries
    on one model share it (``cache``), and equal texts share one expert. ``dtype`` float32 or bfloat16 is the
    torch_dtype of every entry that takes one and names none (auto: each loads as its options say). ``video``:
    every entry must be a video kind, given ``frames`` as its num_frames, and every potential scores each frame
    (``PerFrame``: the sum over frames); without it a video kind is refused. ``video_inputs`` (first_frame,
    control: files, or tensors that an entry's own options override) become options of every video entry, as
    ``frames`` does; ``fps``: the clip's, kept as ``product.fps``. ``extra``: further (potential, lambda) pairs,
    used as they are."""
    if not isinstance(layout, Layout):
        layout = from_prompt(layout)
    gen, weights, masks, backbones = [], [], [], {}
    for i, spec in enumerate(experts):
        where = "--expert" if isinstance(spec, str) else f"experts[{i}]"
        e = _with_frames(_with_dtype(_entry(spec, GENERATIVE, GENERATIVE_FIELDS, where), dtype), video, frames, where,
                         video_inputs)
        g = float(e.get("guidance", guidance))
        key = (e["kind"], e["path"], json.dumps(e["options"], sort_keys=True, default=str), g)
        if key not in backbones:
            options = {k: v for k, v in e["options"].items() if k not in TUNING}
            backbones[key] = GENERATIVE[e["kind"]][1](e["path"], g, **options)
            for k in TUNING:
                setattr(backbones[key], k, bool(e["options"].get(k, False)))
        bb, lay, beta = backbones[key], (from_prompt(e["prompt"]) if e.get("prompt") else layout), e.get("weight", 1.0)
        if not bb.text:
            if lay.objects:
                raise ValueError(f"{where}: kind {e['kind']} has no text conditioning; a layout needs one of "
                                 f"{', '.join(k for k in GENERATIVE if k != 'unet')}")
            gen, weights, masks = gen + bb.experts([""]), weights + [beta], masks + [None]
            continue
        w = g if bb.cfg else 1.0
        drawn = [k for k, o in enumerate(lay.objects) if not o.known]  # objects already in an edited image: none
        made = bb.experts([lay.prompt] + [lay.objects[k].phrase for k in drawn] + [""], lay)
        background, regions = lay.regions(*made[0].shape[-2:])
        regions = [regions[k] for k in drawn]
        free = sum(m is None for m in regions)
        located = free < len(regions)
        gen += made
        weights += [beta * w] * (1 + len(regions)) + [beta * (1 - w - w * free)]
        masks += [background[None] if located else None] + [m if m is None else m[None] for m in regions] + [None]
    pots: List = []
    lams: List[float] = []
    for j, spec in enumerate(potentials):
        e = _with_dtype(_entry(spec, POTENTIALS, POTENTIAL_FIELDS,
                               "--potential" if isinstance(spec, str) else f"potentials[{j}]"), dtype)
        lay = from_prompt(e["prompt"]) if e.get("prompt") else layout
        options = dict(e["options"])
        certify_at = options.pop("certify", None)
        e = dict(e, options=options)
        made = POTENTIALS[e["kind"]][1](e["path"], lay.texts(), lay, **options) + _absences(e, lay)
        if certify_at is not None:
            _set_certify(made, e["kind"], certify_at, "--potential" if isinstance(spec, str) else f"potentials[{j}]")
        pots += made
        lams += [float(e.get("weight", lambdas))] * len(made)
    if layout.edit is not None:  # the given image outside the edit mask, on decoded pixels
        pots.append(layout.edit.known_pixels())
        lams.append(1.0)
    if video:
        pots = [PerFrame(p) for p in pots]
    pots, lams = pots + [p for p, _ in extra], lams + [float(lam) for _, lam in extra]
    decode = next((bb.decode for bb in backbones.values() if bb.decode is not None), None)
    gen, weights, masks = merge_experts(gen, weights, masks)
    return Product(gen, weights=weights, masks=masks, potentials=pots, lambdas=lams, decode=decode, fps=fps)


def _with_frames(entry: dict, video: bool, frames: Optional[int], where: str, inputs: Optional[dict] = None) -> dict:
    """``entry`` checked against the job's output (a video kind for --video, an image kind otherwise), with
    ``num_frames: frames`` added when the job gives frames, and the job's video ``inputs`` (first_frame, control)."""
    if video != (entry["kind"] in VIDEO):
        raise ValueError(f"{where}: kind {entry['kind']} makes videos; write them with --video OUT.gif (or .mp4)"
                         if not video else f"{where}: kind {entry['kind']} makes images; --video needs a video "
                         f"kind ({', '.join(VIDEO)})")
    made = {k: v for k, v in (inputs or {}).items() if not isinstance(v, str)}  # a scene's: the entry's own win
    added = {**({"num_frames": frames} if frames is not None else {}),
             **{k: v for k, v in (inputs or {}).items() if k not in made or k not in entry["options"]}}
    for name, value in added.items():
        given = entry["options"].get(name, value)
        if given is not value and given != value:
            flag = "--frames" if name == "num_frames" else "--" + name.replace("_", "-")
            raise ValueError(f"{where}: options.{name} {given} disagrees with {flag} {value}; give one of them")
    return dict(entry, options={**entry["options"], **added}) if added else entry


WAN_FRAMES = 81  # Wan 2.1's default clip length (num_frames)


def scene_video_product(layout: Layout, experts: Sequence[Spec], potentials: Sequence[Spec] = (), *,
                        guidance: float = 1.0, lambdas: float = 1.0, dtype: str = "auto", frames: Optional[int] = None,
                        fps: Optional[float] = None, video_inputs: Optional[dict] = None) -> Product:
    """Physics over time on named video models: the Layout's scene (``layout.physics``) simulated once at the
    clip's F = ``frames`` times (default Wan's 81; fps: the given one, else the frames spread over the simulated
    duration, kept as ``product.fps``). Every video entry gets what its folder reads: a VACE folder the simulated
    depth video as its control (near = white), an image-to-video folder the scene's rendered first frame
    (``video_inputs`` files, --control / --first-frame, replace them; so do an entry's own options). Two
    potentials on the decoded clip join the entries' own: each object's colour in its simulated mask
    (``RegionalMotionPotential``, mean over frames) and its centroid on its simulated track
    (``TrajectoryPotential``), lambda ``lambdas`` each. The objects move, so the text has no regions: the scene's
    prompt, else its objects' phrases."""
    from .experts.motion import RegionalMotionPotential, TrajectoryPotential, trajectory

    spec = layout.physics.spec
    frames = frames or WAN_FRAMES
    fps = fps or ((frames - 1) / spec.physics.duration if frames > 1 else 1.0)
    traj = trajectory(spec, frames, fps)
    made = {"control": traj.depth[None, None].expand(1, 3, -1, -1, -1) * 2 - 1, "first_frame": traj.images[:1]}
    text = layout.prompt.strip() or " and ".join(o.phrase for o in layout.objects)
    motion = [(RegionalMotionPotential(traj, reduce="mean"), lambdas), (TrajectoryPotential(traj), lambdas)]
    return named_product(Layout(text), experts, potentials, guidance=guidance, lambdas=lambdas, dtype=dtype,
                         video=True, frames=frames, fps=fps, video_inputs={**made, **(video_inputs or {})},
                         extra=motion)


PROBABILITY_KINDS = ("vqa", "detector")  # potentials that are the log of a probability: certify is that probability


def _set_certify(made: List, kind: str, value, where: str) -> None:
    """A config entry's ``certify`` option as each of its potentials' ``certify_threshold`` (``poegen.certify``):
    for a vqa or detector entry the probability at or above which it is met (its threshold is the log), for a
    score (clip, pickscore) the score itself; false: the entry takes no part in the certificate."""
    import math

    if value is False:
        threshold = None
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}.options.certify {value!r}: expected a number (a probability for {kind}), or false")
    elif kind in PROBABILITY_KINDS:
        if not 0 < value <= 1:
            raise ValueError(f"{where}.options.certify {value!r}: a {kind} potential is a probability; give one in "
                             "(0, 1], e.g. 0.9")
        threshold = math.log(value)
    else:
        threshold = float(value)
    for p in made:
        p.certify_threshold = threshold


def _absences(entry: dict, layout: Layout) -> List:
    """A vqa entry's potentials of the layout's absences ("no box"): the VLM asked about each absent phrase and
    answering No (against Yes). Other kinds have no way to say no: they score only what is asked for."""
    if not layout.absent or layout.questions is not None:
        return []
    if entry["kind"] != "vqa":
        log.warning("%s potentials cannot score absences (%s); a vqa potential can", entry["kind"],
                    ", ".join(f"no {a}" for a in layout.absent))
        return []
    made = POTENTIALS["vqa"][1](entry["path"], layout.absent, layout, **{**entry["options"], "answer": "No",
                                                                        "versus": "Yes"})
    for p, text in zip(made, layout.absent):
        p.name = f"vqa[not: {text}]"
    return made


# ---- the embedded shapes world -----------------------------------------------------------------------------

def _over_null(null, experts: List, guidance: float):
    """Composable-diffusion weights: each phrase expert w, the unconditional prior ``null()`` 1 - sum w (left out
    at 0)."""
    weights = [guidance] * len(experts)
    if 1.0 - sum(weights) != 0:
        return [null()] + experts, [1.0 - sum(weights)] + weights
    return experts, weights


def regional_masks(experts: List, weights: List[float], size: int, region: float) -> Optional[List]:
    """Regional composition: near a placed object only its own phrase expert acts (a Gaussian window of std
    ``region`` pixels around its position), so no other phrase's guess about that place is added there (which drew
    a ball between two boxes as a box); where the windows cover less than all (away from every object) each phrase
    acts with the remaining share, as without masks (together they draw background there). The unconditional prior
    (``experts[0]``) takes the rest so that sum beta_i m_i = 1 at every pixel. A clip's phrase (``places``: its
    position per frame, None out of view) gets a window per frame: masks (F, H, W), an image's (1, H, W). None
    where that does not apply: ``region`` 0, no prior expert, an unplaced phrase."""
    from .experts.shapes.model import position_map

    if not region or len(experts) < 2 or getattr(experts[0], "phrase", 0) is not None:
        return None
    places = [getattr(e, "places", None) or [getattr(e, "position", None)] for e in experts[1:]]
    if any(all(p is None for p in ps) for ps in places):
        return None
    windows = [position_map(ps, size, region)[:, 0] for ps in places]  # each (frames, size, size), peak 1
    uncovered = 1 - sum(windows).clamp(max=1)
    masks = [w + uncovered for w in windows]
    rest = 1 - sum(w * m for w, m in zip(weights[1:], masks))
    return [rest / weights[0]] + masks


def shapes_product(layout: Layout, *, prior=None, vlm=None, guidance: Optional[float] = None,
                   potential_weight: Optional[float] = None, schedule="linear", dtype: str = "auto",
                   counts: bool = True, footprint: bool = True, region: float = REGION_PX) -> Product:
    """The shapes world's Product for a Layout: each object's phrase expert of the prior at the centre of its box
    or mask (the prior's own way of placing an object) over the divided-out prior, one VLM question per object
    and relation, the answer no to one per absent phrase and, unless it edits an image, one count per shape
    (``count_questions``; ``counts=False`` leaves them out, an ablation) and the scorer's form potential (every
    object well formed, ``ShapesFormExpert``), where every object of several has a
    place the ``Footprint`` (nothing drawn away from them; ``footprint=False`` leaves it out), and a simulated
    scene's layout potential and hard constraint (weights from its spec). ``region``: each placed phrase expert
    acts within a Gaussian window of that std in pixels (``regional_masks``; 0: everywhere, an ablation)."""
    from .experts.shapes.model import load_prior
    from .experts.shapes.scorer import load_vlm

    physics = layout.physics
    if physics is not None and layout.prompt.strip():
        _check_scene_prompt(layout.prompt, physics.spec)
    phrases = []
    for i, o in enumerate(layout.objects):
        try:
            phrases.append(parse_phrase(o.phrase))
        except ValueError as e:
            raise ValueError(f"objects[{i}].phrase: {e}") from None
    guidance = GUIDANCE if guidance is None else guidance
    potential_weight = VLM_WEIGHT if potential_weight is None else potential_weight
    prior = prior or cached("shapes-prior", "embedded", None, None, load_prior)
    size = prior.config["image_size"]
    experts, weights = _over_null(lambda: prior.null(dtype), [prior.expert(str(p), o.centre(size), dtype) for p, o
                                                              in zip(phrases, layout.objects) if not o.known], guidance)
    potentials, lambdas = [], []
    # (question, its lambda as a multiple of potential_weight, whether the answer asked is no)
    asked = [(q, 1.0, False) for q in layout.questions or []]
    if layout.questions is None:
        prompt = Prompt(phrases, [(i, rel.replace(" of", ""), j) for i, rel, j in layout.relations])
        asked = [(q, 1.0, False) for q in prompt.object_questions()]
        asked += [(q, RELATION_WEIGHT, False) for q in prompt.relation_questions()]
        asked += [(f"is there a {a}?", COUNT_WEIGHT, True) for a in layout.absent]
        if layout.edit is None and counts:  # the layout lists every object of the image: ask for nothing else
            asked += [(q, COUNT_WEIGHT, False) for q in count_questions(phrases)]
    if potential_weight and asked:
        scorer = vlm or cached("shapes-vlm", "embedded", None, None, load_vlm)
        potentials = [scorer.expert(q, negate) for q, _, negate in asked]
        lambdas = [potential_weight * m for _, m, _ in asked]
        if layout.questions is None and layout.edit is None and counts:  # every object well formed, too
            potentials.append(scorer.form())
            lambdas.append(potential_weight * FORM_WEIGHT)
    if layout.edit is not None:  # the given image outside the edit mask; the new objects' footprints stand in
        potentials.append(layout.edit.known_pixels())  # the given image outside the edit mask
        lambdas.append(1.0)
    centres = [o.centre(size) for o in layout.objects]
    if footprint and layout.edit is None and physics is None and centres and None not in centres:
        from .experts.shapes.footprint import footprint as make_footprint
        potentials.append(make_footprint(centres, phrases, size))  # nothing drawn away from the placed objects
        lambdas.append(1.0)
    for c in physics.spec.constraints if physics is not None else ():
        potentials.append(physics.layout_potential() if c.type == "layout" else physics.hard_constraint(c.tolerance))
        lambdas.append(c.weight)
    return Product(experts, weights=weights, masks=regional_masks(experts, weights, size, region),
                   potentials=potentials, lambdas=lambdas, schedule=schedule)


TRAJECTORY_WEIGHT = 0.05  # lambda of the centroid-tracking potential, late in the schedule (early x0 are blurry)


def shapes_video_product(layout: Layout, *, frames: Optional[int] = None, fps: Optional[float] = None, prior=None,
                         vlm=None, temporal=None, guidance: Optional[float] = None,
                         potential_weight: Optional[float] = None, schedule="linear", dtype: str = "auto",
                         trajectory_weight: float = TRAJECTORY_WEIGHT, region: float = 0.0,
                         video_prior: Optional[bool] = None, start: Optional[float] = None) -> Product:
    """The shapes world in motion: clips (3, F, H, W) from the shapes video prior and the image prior's phrases.

    The motion comes from a simulation: the Layout's scene (``layout.physics``: a scene spec's, or a motion
    prompt's such as "a red ball rolls off a blue box", ``specs.for_shapes``), recorded at F = ``frames`` times
    (defaults ``SHAPES_CLIP_FRAMES`` at ``SHAPES_CLIP_FPS``; kept as ``product.fps``). Each
    object's ``TrackedExpert`` puts its phrase at its simulated centroid frame by frame (the unconditional prior
    where it is out of view), over the divided-out prior; potentials: the per-frame VLM question of every object
    in view throughout and, when all are, the count questions (``PerFrame``, mean over frames), the regions'
    agreement with the simulated masks (``RegionalMotionPotential``, mean over frames) and the centroids'
    (``TrajectoryPotential``, lambda ``trajectory_weight``, exponential schedule). A prompt without a motion verb
    gives a still clip: its placed objects (the Layout's) in every frame. ``video_prior``: the base is the video
    prior, the unconditional frames corrected by ``temporal`` (a ``TemporalNet``; default: the shipped one,
    trained on simulated clips), so the experts are video^1 * null^(1 - 1 - sum w) * prod phrase^w (False:
    independent frames, null^(1 - sum w) * prod phrase^w; None: the video prior for a clip from noise, independent
    frames for one started from its simulation, where on tuning motion prompts (prompt seed 1000, one of each kind,
    seeds 1000-1001) both made 10 of 12 clips exact and the video prior cost a third more time: 16.0 s against 10.7 s
    of sampling). ``region``: regional composition frame by frame
    (``regional_masks``), off by default: with ``REGION_PX`` poe's mean clip IoU over the three motion prompts of
    ``poegen eval video`` fell from 0.888 to 0.863 (4 seeds, 8 particles, 20 steps). The image ablations (counts,
    footprint) have no meaning for clips: they are refused, not ignored. ``start`` (default ``SHAPES_CLIP_START``; 0:
    from pure noise): a simulated clip is sampled from its render noised to this sigma (``Product.start``), so the
    simulation proposes every frame and the experts and potentials redraw it below that noise level."""
    import math

    import torch
    from .experts.motion import RegionalMotionPotential, TrajectoryPotential, trajectory
    from .experts.shapes.tracked import TrackedExpert
    from .experts.shapes.model import load_prior
    from .experts.shapes.video import load_video_prior
    from .experts.shapes.scorer import FRAMES, load_vlm
    from .product import lambda_schedule

    frames = frames or defaults.SHAPES_CLIP_FRAMES
    fps = fps or defaults.SHAPES_CLIP_FPS
    guidance = GUIDANCE if guidance is None else guidance
    potential_weight = VLM_WEIGHT if potential_weight is None else potential_weight
    prior = prior or cached("shapes-prior", "embedded", None, None, load_prior)
    size = prior.config["image_size"]
    spec = layout.physics.spec if layout.physics is not None else None
    potentials, lambdas = [], []
    if spec is not None:
        traj = trajectory(spec, frames, fps, resolution=size)
        phrases = [parse_phrase(f"{o.size} {o.colour} {o.shape}") for o in spec.objects]
        tracks, visible = list(traj.centroids.transpose(0, 1)), list(traj.visible.T)
        steady = [p for p, v in zip(phrases, visible) if bool(v.all())]
        follow = TrajectoryPotential(traj)
        follow.schedule = lambda_schedule("exponential", 8.0)
        weight = next((c.weight for c in spec.constraints if c.type == "layout"), 1.0)
        potentials, lambdas = [RegionalMotionPotential(traj, reduce="mean"), follow], [weight, trajectory_weight]
    else:
        phrases = [parse_phrase(o.phrase) for o in layout.objects]
        tracks = [torch.tensor([o.centre(size) or (math.nan, math.nan)] * frames) for o in layout.objects]
        visible, steady = [None] * len(phrases), phrases
    anywhere = torch.full((frames, 2), math.nan)
    null = lambda: TrackedExpert(prior.net, None, anywhere, None, dtype)  # noqa: E731
    experts, weights = _over_null(null, [TrackedExpert(prior.net, p, t, v, dtype)
                                         for p, t, v in zip(phrases, tracks, visible)], guidance)
    masks = regional_masks(experts, weights, size, region)
    start = defaults.SHAPES_CLIP_START if start is None else start
    if video_prior is None:
        video_prior = spec is None or not start > 0
    if video_prior:  # the base is the video prior; the frames' unconditional prior is divided out once more
        temporal = temporal or cached("shapes-video", "embedded", None, None, load_video_prior)
        if experts[0].phrase is not None:
            experts, weights = [null()] + experts, [0.0] + weights  # (masks are None then)
        if masks is not None:  # keep each pixel's total weight: the null's share moves to the video expert
            masks[0] = (masks[0] * weights[0] - 1) / (weights[0] - 1)
            masks.append(torch.ones_like(masks[1]))
        experts.append(TrackedExpert(prior.net, None, anywhere, None, dtype, temporal=temporal))
        weights = [weights[0] - 1.0] + weights[1:] + [1.0]
    asked = [(q, 1.0) for q in Prompt(steady, []).object_questions()]
    if len(steady) == len(phrases):  # every object in every frame: nothing else drawn in any
        asked += [(q, COUNT_WEIGHT) for q in count_questions(phrases)]
    if potential_weight and asked:
        # the frames keep the scorer before its last retraining: on tuning seeds the retrained one left fewer
        # frames exact (0.725 against 0.825, two motion prompts x 4 seeds)
        scorer = vlm or cached("shapes-vlm", FRAMES, None, None, lambda: load_vlm(stem=FRAMES))
        potentials += [PerFrame(scorer.expert(q), reduce="mean") for q, _ in asked]
        lambdas += [potential_weight * m for _, m in asked]
    product = Product(experts, weights=weights, masks=masks, potentials=potentials, lambdas=lambdas,
                      schedule=schedule, fps=fps)
    if spec is not None and start > 0:  # the simulation's render, noised to ``start``: the physics proposes
        product.start = (traj.clip(), start)
    return product


def shapes_prompt_product(prompt: Union[str, Prompt], **options) -> Product:
    """The shapes world's product for a prompt (``specs.shapes_layout``); ``options``: ``shapes_product``'s."""
    return shapes_product(shapes_layout(prompt), **options)


def shapes_scene_product(physics, **options) -> Product:
    """The shapes world's product for a simulated scene (a PhysicsExpert), through its Layout (``from_physics``);
    ``options``: ``shapes_product``'s."""
    return shapes_product(from_physics(physics), **options)
