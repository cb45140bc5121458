"""The defaults of a generation job, in one place.

``Job``, the options of ``poegen generate``, ``edit``, ``batch``, ``compare`` and ``eval`` (their values and help
texts), ``samplers.sample``, ``compare.run`` and the shapes world's product all read them from here, so a job run
from Python and the same job run from the command line mean the same thing. A sampler's own switches (MCMC moves,
resampling threshold, ...) are its preset in ``samplers.PRESETS``. Importing this module loads nothing else.
"""

SAMPLER = "poe"   # the named sampler (samplers.PRESETS)
PARTICLES = 8     # in the shapes world, 8 particles with one MCMC move a level were as often exact as 16 with two,
#                   at a third of the cost
STEPS = 20        # noise levels; 20 kept the shapes world's exact rates of 30 at two thirds of the time
SEED = 0
SELECT = "best"   # which particle becomes the image: "best" (the highest final reward) or "draw" (a weighted draw)
GRAD_GUIDANCE = 0.0  # the stochastic proposal's step along the potentials' gradient (SamplerConfig.grad_guidance)
REWARD_EVERY = 1  # score the potentials every k levels (SamplerConfig.reward_every)
DEVICE = "cpu"
DISPLAY_PX = 256  # images and clips narrower than this are written enlarged (nearest pixel) to at least this width,
#                   their native pixels beside them as NAME_raw

# a shapes-world clip (--video without a video model): 2 s at a rate a person watches
SHAPES_CLIP_FRAMES = 16
SHAPES_CLIP_FPS = 8.0
SHAPES_CLIP_START = 0.15  # a simulated clip starts from its render noised to this sigma (0: from pure noise). The
#                           prior knows settled, upright boxes: from higher noise it redraws a box tilting in mid-air
#                           as a ball (tuning motion prompts, drops and topples: clips exact 0/6 from 0.3, 4/6 from
#                           0.15; frames exact 0.85 and 0.97)
MARGIN = 2        # an edit with a scene: pixels of change around the new objects' footprint

# the weights of a job that names none (Job.guidance and the potential weight left None)
SHAPES_GUIDANCE = 2.5          # the shapes world: composable-diffusion weight of each phrase expert
SHAPES_POTENTIAL_WEIGHT = 3.0  # the shapes world: lambda of each yes/no question of its scorer
MODEL_GUIDANCE = 1.0           # named models: the weight of each generative expert
MODEL_POTENTIAL_WEIGHT = 1.0   # named models: lambda of each potential (--potential, a config's potentials)

# certified images (poegen.certify): a potential's own say that a sample is right, no checker. Both values are a
# first choice, to be calibrated on tuning prompts against the checker (docs/results.md, "Certificate")
CERTIFY_P = 0.9        # a yes/no question (the shapes scorer, VQAScore) is met when answered as wanted with P >= this
CERTIFY_COUNT_P = 0.6  # the shapes scorer's counts of two or more: it is less sure of them than of presence; on
#                        tuning prompts (ShapesEval seed 1000, 2,016 final particles) P >= 0.6 kept the particles'
#                        precision (0.968 vs 0.966 at 0.9) and raised recall on tier B from 0.69 to 0.92
CERTIFY_STRAY_PX = 2.0  # the shapes world's footprint is met below this many foreground pixels away from the objects;
#                         on the same tuning particles 2 (was 4) raised tier A's precision from 0.970 to 0.984 at the
#                         same recall (an extra small object beside a placed one)
CERTIFY_UNSURE_PX = 20.0  # the shapes scorer's form potential is met below this many object pixels whose shape its
#                           map is unsure of (a half-formed object); chosen on tuning prompts (ShapesEval seeds
#                           1000-1003): docs/results.md, "Certificate"

# anytime sampling (poegen.anytime): rounds until the potentials certify an image
BUDGETS = ("auto", "anytime", "fixed")
BUDGET = "auto"         # "anytime" rounds, one "fixed" run of PARTICLES as before, or "auto": anytime for an
#                         image, fixed for a clip (a clip's certificate does not yet tell a right clip from a wrong
#                         one: on the user suite's clips, rounds made 0.40 of them exact against 0.70 fixed)
FIRST_ROUND = 2         # the first round costs this many particles (poe: twice as many, unmoved); later: PARTICLES
MAX_NFE_FACTOR = 4      # the rounds stop before spending more than this many fixed runs of PARTICLES
DISTINCT_SHARE = 0.02   # images=K: two picks differ in at least this share of their pixels

# sampler comparisons (`poegen compare`, `poegen eval`, compare.run)
COMPARE_SAMPLERS = ("poe", "smc", "best-of-n", "ancestral")
COMPARE_SEEDS = 8
