"""A job's fields checked before any work (Job.from_dict), naming the field and the fix."""
import pytest

from poegen.job import Job


def test_job_dtype_is_checked():
    assert Job.from_dict({"prompt": "a red ball", "dtype": "bfloat16"}, "job").dtype == "bfloat16"
    with pytest.raises(ValueError, match="job: dtype 'half': expected one of auto, float32, bfloat16"):
        Job.from_dict({"prompt": "a red ball", "dtype": "half"}, "job")


def test_a_job_file_may_name_the_potential_weight_by_its_old_name(tmp_path):
    from poegen.batch import read_jobs

    new = Job.from_dict({"prompt": "a red ball", "potential_weight": 1.5}, "job")
    assert Job.from_dict({"prompt": "a red ball", "vlm_weight": 1.5}, "job") == new
    (tmp_path / "jobs.yaml").write_text("- {id: a, prompt: a red ball, vlm_weight: 1.5}\n")
    assert read_jobs(tmp_path / "jobs.yaml") == [("a", new)]
    with pytest.raises(ValueError, match="job: vlm_weight is the old name of potential_weight; give only"):
        Job.from_dict({"prompt": "a red ball", "vlm_weight": 1.5, "potential_weight": 2.0}, "job")


def test_both_spellings_of_the_potential_weight_flag_make_the_same_image(tmp_path, capsys):
    """--vlm-weight is --potential-weight's old name: the same job (its metadata) and the same pixels."""
    import json

    from PIL import Image

    from poegen.cli import main

    made = {}
    for flag in ("--potential-weight", "--vlm-weight"):
        out = tmp_path / f"{flag[2:]}.png"
        assert main(["generate", "a red ball", "-q", "--particles", "2", "--steps", "3", flag, "0.5",
                     "--out", str(out)]) == 0
        with Image.open(out) as im:
            made[flag] = (im.tobytes(), json.loads(im.text["poegen"])["job"])
    assert made["--vlm-weight"] == made["--potential-weight"]
    assert made["--vlm-weight"][1]["potential_weight"] == 0.5


def test_job_refuses_an_unknown_sampler_naming_the_presets():
    with pytest.raises(ValueError, match="job: unknown sampler 'nope'; available: ancestral, best-of-n, smc, ais, poe"):
        Job.from_dict({"prompt": "a red ball", "sampler": "nope"}, "job")
