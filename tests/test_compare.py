"""Sampler comparisons: equal NFE, metrics, tables and a report a browser renders."""
import json
import shutil
import subprocess

import pytest
import torch

from poegen import compare
from poegen.cli import main
from poegen.report import diversity


def test_diversity_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    x[1] += 0.5
    assert diversity(x) == pytest.approx(0.5)
    assert diversity(x[:1]) == 0.0


@pytest.mark.parametrize("sampler", ["smc", "best-of-n"])
def test_equal_nfe_up_to_level_zero(sampler):
    N, M, K = 4, 2, 10
    poe = compare.equal_nfe_options("poe", N, M)["num_particles"] * (1 + K * (1 + M))
    other = compare.equal_nfe_options(sampler, N, M)["num_particles"] * (1 + K)
    assert other - poe == N * M  # each extra chain also evaluates level 0


def test_ancestral_runs_one_chain():
    # a uniform draw from independent chains has the law of one chain: extra NFE buys nothing
    assert compare.equal_nfe_options("ancestral", 16, 2) == dict(num_particles=1, select="all")


def test_scene_verdict_reads_the_simulated_layout():
    from poegen.experts.physics import PhysicsExpert
    from poegen.experts.scene import load_scene

    physics = PhysicsExpert(load_scene("examples/stacking.yaml"))
    image = physics.image
    assert compare.judge_scene(image, physics) == {"present": True, "relation": True, "exact": True}
    moved = image.roll(3, dims=-1)  # everything 3 px to the right
    assert compare.judge_scene(moved, physics) == {"present": True, "relation": False, "exact": False}
    assert compare.judge_scene(moved, physics, tolerance=3.5)["relation"]
    assert compare.judge_scene(-torch.ones_like(image), physics)["present"] is False
    assert compare.is_scene("examples/stacking.yaml") and not compare.is_scene("a red ball on a blue box")


def test_workers_do_not_change_results():
    args = (["a red ball", "examples/stacking.yaml"], ["poe", "ancestral"], 2, 2, 1, 2)
    one, img1 = compare.run(*args, progress=False)
    two, img2 = compare.run(*args, progress=False, workers=2)
    assert [(r.sampler, r.seed, r.present) for r in one] == [(r.sampler, r.seed, r.present) for r in two]
    assert [r.vlm for r in two] == pytest.approx([r.vlm for r in one], abs=1e-3)  # thread counts differ
    assert all(torch.allclose(img1[k], img2[k], atol=1e-3) for k in img1)


def test_pool_exact_is_the_share_of_exact_final_particles():
    rows, _ = compare.run(["a red ball", "a red ball left of a blue box"], ["best-of-n", "ancestral"], 2, 2, 1, 3,
                          progress=False)
    for r in rows:
        pool = r.metrics["pool_exact"]
        n = 1 if r.sampler == "ancestral" else 4
        assert round(pool * n) == pytest.approx(pool * n)  # a count of the run's particles
        if r.sampler == "ancestral":  # one particle: the returned image is the pool
            assert pool == float(r.exact)
        elif r.exact:  # the returned image is one of the pool's
            assert pool >= 1 / n


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["compare", "a red ball", "a red ball left of a blue box", "--samplers", "poe,ancestral", "--seeds", "2",
                 "--steps", "2", "--particles", "2", "--quiet", "--workers", "1", "--out", str(out)]) == 0
    return out


def test_compare_writes_tables_and_a_self_contained_report(report, capsys):
    data = json.loads((report / "summary.json").read_text())
    assert [s["sampler"] for s in data["summary"]] == ["poe", "ancestral"]
    assert len(data["samples"]) == 2 * 2 * 2 and all(len(r["ess"]) == 2 for r in data["samples"])
    assert (report / "samples.csv").read_text().count("\n") == 9 and (report / "summary.csv").exists()
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 4  # the plots plus one grid per sampler x prompt
    assert "http" not in html.replace("http-equiv", "")  # nothing to fetch: readable offline


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make install adds it where apt works)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,1400",
                    f"file://{report / 'report.html'}"], check=True, timeout=120, capture_output=True)
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # not blank: text, plots and images drawn
    dark = sum(img.histogram()[:200])
    assert dark > 0.01 * img.width * img.height


def test_run_refuses_a_sampler_or_target_named_twice():
    with pytest.raises(ValueError, match="--samplers: 'poe' is named twice"):
        compare.run(["a red ball"], ["poe", "ancestral", "poe"], 1)
    with pytest.raises(ValueError, match="targets: 'a red ball' is named twice"):
        compare.run(["a red ball", "a blue box", "a red ball"], ["poe"], 1)


def test_compare_without_out_writes_under_the_temp_dir_and_says_where(tmp_path, monkeypatch, capsys):
    """Without --out the report goes to a fresh folder under the system's temp directory, named on stderr; nothing is
    written into the working directory."""
    import tempfile
    from pathlib import Path

    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir(), temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["compare", "a red ball", "--samplers", "poe", "--seeds", "1", "--steps", "2", "--particles", "2",
                 "--quiet", "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert list(work.iterdir()) == []
    (folder,) = temp.iterdir()
    assert folder.name.startswith("poegen-compare-") and (folder / "report.html").is_file()
    assert f"writing the report to {folder}" in err and f"tables in {folder}" in out
    assert Path(folder).parent == temp
