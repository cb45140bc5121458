"""A job's fields checked before any work (Job.from_dict), naming the field and the fix."""
import pytest

from poegen.job import Job


def test_job_dtype_is_checked():
    assert Job.from_dict({"prompt": "a red ball", "dtype": "bfloat16"}, "job").dtype == "bfloat16"
    with pytest.raises(ValueError, match="job: dtype 'half': expected one of auto, float32, bfloat16"):
        Job.from_dict({"prompt": "a red ball", "dtype": "half"}, "job")


def test_job_refuses_an_unknown_sampler_naming_the_presets():
    with pytest.raises(ValueError, match="job: unknown sampler 'nope'; available: ancestral, best-of-n, smc, ais, poe"):
        Job.from_dict({"prompt": "a red ball", "sampler": "nope"}, "job")
