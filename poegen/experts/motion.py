"""Physics over time: one pybullet simulation of a scene recorded at a clip's frame times, and two potentials on clips.

``trajectory(source, frames, fps)`` simulates a scene spec (or a PhysicsExpert's spec, or shapes-world objects)
once, keeps every object's pose at t_f = f / fps, and renders each frame through the still-image route's code
(``shapes.render.render`` for the image and masks, ``physics.depth_map`` for depth), so frame f equals
``PhysicsExpert(spec, until=t_f)``. On clips x0 (N, 3, F, H, W) in [-1, 1]:

- ``RegionalMotionPotential``: sum over frames and visible objects of log(floor + agreement) between the object's
  colour and its simulated mask at that frame, the still layout potential's score per frame;
- ``TrajectoryPotential``: -sum over frames and visible objects of |c - c*|^2 / (2 s^2), c the object's
  colour-segmented centroid in the frame, c* the simulated one (pixels), s a tolerance in pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..product import PerFrame
from .scene import SceneError, SceneSpec, simulate_scene
from .physics import PhysicsExpert, at_size, colour_centroids, depth_map, dice_agreement


@dataclass
class Trajectory:
    """A simulated scene at F frame times: per-frame shapes Scenes and their renders at ``resolution`` pixels.
    (Not frozen: ``Product.to(device)`` moves its tensors with the potentials that hold it.)"""

    times: Tensor            # (F,) seconds
    poses: Tensor            # (F, K, 3) world x, y, angle (radians)
    scenes: Tuple            # F shapes-world Scenes (the objects at each frame's pose)
    images: Tensor           # (F, 3, H, W) rendered frames in [-1, 1]
    masks: Tensor            # (F, K, H, W) per-object coverage (occlusion applied)
    depth: Tensor            # (F, H, W) nearness in [0, 1]
    centroids: Tensor        # (F, K, 2) mask centroids (col, row) in pixels; NaN where the object is out of view
    visible: Tensor          # (F, K) bool: some of the object is in view
    colours: Tensor          # (K, 3) object colours in [-1, 1]
    names: Tuple[str, ...]

    def clip(self) -> Tensor:
        """The rendered clip (3, F, H, W), the layout a video model's x0 is compared with."""
        return self.images.transpose(0, 1)


def _source(source, velocities):
    """(spec or None, initial SceneObjects, velocities, names) of a SceneSpec, PhysicsExpert, Scene or objects."""
    if isinstance(source, PhysicsExpert):
        source = source.spec
    if isinstance(source, SceneSpec):
        if velocities is not None:
            raise ValueError("trajectory: a scene spec carries its own objects[i].velocity and .spin; "
                             "give velocities only with shapes-world objects")
        return source, None, None, tuple(o.name for o in source.objects)
    objects = list(getattr(source, "objects", source))  # a shapes Scene or a list of SceneObjects
    if velocities is not None and len(velocities) != len(objects):
        raise ValueError(f"trajectory: velocities has {len(velocities)} entries for {len(objects)} objects; "
                         "give one (vx, vy, spin) per object")
    return None, objects, velocities, tuple(o.phrase() for o in objects)


def trajectory(source, frames: int, fps: float, resolution: Optional[int] = None,
               velocities: Optional[Sequence[Tuple[float, float, float]]] = None, time_step: float = 1.0 / 120.0
               ) -> Trajectory:
    """Simulate ``source`` once and record it at ``frames`` times f / fps (f = 0 .. frames-1).

    ``source``: a SceneSpec or PhysicsExpert (its physics, camera resolution and objects' velocity/spin), or a
    shapes-world Scene / list of SceneObjects (with optional per-object (vx, vy, spin) ``velocities`` in world
    units/s and rad/s, simulated with ``time_step``). ``resolution`` defaults to the spec's camera (32 otherwise)."""
    from .shapes.render import centroid, render, to_unit
    from .shapes.world import COLOURS, Scene, simulate

    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"trajectory: frames must be a whole number >= 1, got {frames!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"trajectory: fps must be a number > 0, got {fps!r}")
    spec, objects, velocities, names = _source(source, velocities)
    dt = spec.physics.time_step if spec is not None else time_step
    size = resolution or (spec.camera.resolution if spec is not None else 32)
    times = [f / fps for f in range(frames)]
    wanted = {round(t / dt): f for f, t in enumerate(times)}  # step -> frame (frames closer than dt share a step)
    poses: dict = {}

    def observe(step, state):
        if step in wanted:
            poses[step] = state

    if spec is not None:
        if times[-1] > spec.physics.duration + 1e-9:
            raise SceneError(f"physics.duration: {frames} frames at {fps:g} fps last {times[-1]:.2f} s, longer than "
                             f"the {spec.physics.duration:g} s simulated; raise physics.duration or give fewer frames")
        base = simulate_scene(spec, until=times[-1], observe=observe)
    else:
        base = simulate(objects, steps=max(wanted), dt=dt, velocities=list(velocities) if velocities else None,
                        observe=observe)
    base_objects = base.objects if spec is not None else objects
    pose = torch.tensor([poses[round(t / dt)] for t in times], dtype=torch.float32)  # (F, K, 3)
    scenes, images, masks, depth = [], [], [], []
    for f in range(frames):
        scene = Scene(tuple(replace(o, x=x, y=y, angle=a) for o, (x, y, a) in zip(base_objects, pose[f].tolist())))
        image, mask = render(scene, size)
        scenes.append(scene)
        images.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask))
        depth.append(depth_map(scene, masks[-1], size))
    masks_t = torch.stack(masks)
    visible = masks_t.flatten(2).sum(-1) > 0.5
    cents = torch.tensor([[centroid(m.numpy()) if v else (math.nan, math.nan) for m, v in zip(fm, fv)]
                          for fm, fv in zip(masks_t, visible)], dtype=torch.float32).reshape(frames, -1, 2)
    colours = torch.from_numpy(np.stack([to_unit(COLOURS[o.colour]) for o in base_objects]))
    return Trajectory(torch.tensor(times), pose, tuple(scenes), torch.stack(images), masks_t, torch.stack(depth),
                      cents, visible, colours, names)


def _frames(clips: Tensor, traj: Trajectory, who: str) -> Tensor:
    """Clips (N, 3, F, H, W) as (N*F, 3, R, R) frames at the trajectory's camera size, checked against its F."""
    if clips.dim() != 5 or clips.shape[1] != 3:
        raise ValueError(f"{who}: expected clips (N, 3, F, H, W), got shape {tuple(clips.shape)}")
    if clips.shape[2] != len(traj.times):
        raise ValueError(f"{who}: the clips have {clips.shape[2]} frames, the trajectory {len(traj.times)}; "
                         "simulate the trajectory with the video's frame count")
    return at_size(PerFrame.fold(clips.float().clamp(-1, 1)), traj.masks.shape[-2:])


class RegionalMotionPotential:
    """sum over frames f and objects k in view of log(floor + agreement_fk): object k's colour fills its simulated
    mask at frame f (the still layout potential's comparator, default soft Dice), ``reduce="mean"``: the average
    over frames, a per-frame lambda."""

    def __init__(self, traj: Trajectory, comparator=dice_agreement, floor: float = 0.05, reduce: str = "sum",
                 name: str = "motion-regions"):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"RegionalMotionPotential: reduce {reduce!r} is not sum or mean")
        self.traj, self.comparator, self.floor, self.reduce, self.name = traj, comparator, floor, reduce, name

    def log_potential(self, x0: Tensor) -> Tensor:
        frames = _frames(x0, self.traj, self.name)
        n, F = x0.shape[0], x0.shape[2]
        masks = self.traj.masks.to(x0.device)
        per_image = masks.expand(n, *masks.shape).flatten(0, 1)  # (N*F, K, H, W), clip by clip
        agree = self.comparator(frames, per_image, self.traj.colours.to(x0.device)).reshape(n, F, -1)
        value = (torch.log(self.floor + agree) * self.traj.visible.to(x0.device)).sum((1, 2))
        return (value / F if self.reduce == "mean" else value).to(x0.dtype)


class TrajectoryPotential:
    """-sum over frames f and objects k in view of |c_fk - c*_fk|^2 / (2 s^2): each object's colour-segmented
    centroid follows its simulated one (pixels of the trajectory's camera; s = ``tolerance`` px). An object whose
    colour is absent from a frame gets its centroid at the image's corner, far from any in-view target."""

    def __init__(self, traj: Trajectory, tolerance: float = 2.0, name: str = "motion-trajectory"):
        if not tolerance > 0:
            raise ValueError(f"TrajectoryPotential: tolerance must be > 0 px, got {tolerance!r}")
        self.traj, self.tolerance, self.name = traj, float(tolerance), name

    def log_potential(self, x0: Tensor) -> Tensor:
        frames = _frames(x0, self.traj, self.name)
        n, F = x0.shape[0], x0.shape[2]
        c, _ = colour_centroids(frames, self.traj.colours.to(x0.device))
        target = self.traj.centroids.to(x0.device).nan_to_num(0.0)
        d2 = ((c.reshape(n, F, -1, 2) - target) ** 2).sum(-1) * self.traj.visible.to(x0.device)
        return (-d2.sum((1, 2)) / (2 * self.tolerance ** 2)).to(x0.dtype)


def foreground_iou(clips: Tensor, traj: Trajectory, threshold: float = 0.5) -> Tensor:
    """(N, F) intersection over union, frame by frame, of each clip's foreground (pixels farther than ``threshold``
    (RGB distance in [-1, 1] units) from the empty scene's render: background and floor) with the simulation's
    render's foreground, read the same way (so the simulation itself scores 1: its coverage masks thresholded at
    half a pixel scored 0.5-0.86 on a small object's edge pixels). A frame whose both foregrounds are empty scores
    1."""
    from .shapes.render import render
    from .shapes.world import Scene

    frames = _frames(clips, traj, "foreground_iou")
    n, F = clips.shape[0], clips.shape[2]
    empty = torch.from_numpy(render(Scene(()), traj.masks.shape[-1])[0]).to(frames.device)
    drawn = ((frames - empty) ** 2).sum(1).sqrt().reshape(n, F, *frames.shape[-2:]) > threshold
    truth = (((traj.images.to(frames.device) - empty) ** 2).sum(1).sqrt() > threshold)[None]
    inter, union = (drawn & truth).flatten(2).sum(-1), (drawn | truth).flatten(2).sum(-1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float32)).float()
