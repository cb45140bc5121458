"""`poegen eval shapes|physics|edit|video`: the shapes world's benchmarks, one entry over ``compare.run``."""
import json

import pytest

from poegen.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _row(sampler, prompt, seed, **kw):
    return {"sampler": sampler, "prompt": prompt, "seed": seed, "present": True, "relation": True, "exact": True,
            "vlm": 0.0, "log_Z": 0.0, "nfe": 54, "seconds": 0.5, "ess": [], "particles": 2, "metrics": {}, **kw}


def test_eval_lists_its_four_suites_and_refuses_others(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("shapes", "physics", "edit", "video"))
    with pytest.raises(SystemExit) as e:
        main(["eval", "tables"])
    assert e.value.code == 2
    assert "invalid choice: 'tables'" in capsys.readouterr().err


def test_the_suites_share_the_run_options_and_keep_the_old_spellings():
    import argparse

    from poegen.evaluate import add_parsers

    ap = argparse.ArgumentParser()
    add_parsers(ap)
    for suite in ("shapes", "physics", "edit", "video"):
        args = ap.parse_args([suite, "--seeds", "3", "--seed0", "7", "--samplers", "poe", "--particles", "2",
                              "--mcmc-steps", "0", "--steps", "4", "--workers", "2", "--out", "x", "-q"])
        assert (args.seeds, args.seed0, args.samplers, args.particles, args.mcmc_steps, args.steps, args.workers,
                args.out, args.quiet) == (3, 7, "poe", 2, 0, 4, 2, "x", True)
        assert ap.parse_args([suite, "--report", "a", "b"]).report == ["a", "b"]
    # the scripts' spellings: --samples for the seeds, --vlm-weight for the potentials' weight
    assert ap.parse_args(["shapes", "--samples", "5"]).seeds == 5
    assert ap.parse_args(["shapes", "--vlm-weight", "1.5"]).potential_weight == 1.5
    assert ap.parse_args(["shapes", "--potential-weight", "2"]).potential_weight == 2.0
    # each suite keeps its defaults
    assert ap.parse_args(["physics"]).seeds == 32 and ap.parse_args(["video"]).seeds == 2
    assert (ap.parse_args(["edit"]).particles, ap.parse_args(["edit"]).steps) == (16, 30)


def test_eval_physics_runs_saves_and_reprints_its_table(tmp_path, capsys):
    """A real (tiny) run on one example scene: the table, rows.json and images.pt, and --report prints the same
    table from the saved rows."""
    out = tmp_path / "run"
    assert main(["eval", "physics", "--scenes", str(ROOT / "examples" / "stacking.yaml"), "--seeds", "1",
                 "--samplers", "poe,ancestral", "--particles", "2", "--steps", "4", "-q", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall_poe_exact=" in printed and "overall_ancestral_placed=" in printed
    rows = json.loads((out / "rows.json").read_text())
    assert [(r["sampler"], r["seed"]) for r in rows] == [("poe", 0), ("ancestral", 0)]
    assert (out / "images.pt").is_file()
    assert main(["eval", "physics", "--report", str(out)]) == 0
    table = lambda text: [l for l in text.splitlines() if not l.startswith("wrote")]  # noqa: E731, E741
    assert table(capsys.readouterr().out) == table(printed)


def test_eval_report_of_edit_and_video_rows(tmp_path, capsys):
    """--report reprints each suite's figures: edit per variant (edit_bg_mse, edit_placed), video per frame."""
    edit = [_row("poe", "cases/ball_onto_box.yaml", s, metrics={"bg_mse": m}, variant=v)
            for v, m in (("replace", 1e-5), ("potential", 1e-1)) for s in (0, 1)]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "rows.json").write_text(json.dumps(edit))
    assert main(["eval", "edit", "--report", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "variant=replace poe edit_bg_mse=1.00e-05 (median 1.00e-05) edit_placed=1.000 (n=2)" in out
    assert "variant=potential poe edit_bg_mse=1.00e-01" in out and "ball_onto_box" in out
    clip = {"iou_f00": 0.5, "iou_f01": 1.0, "iou": 0.75, "exact_frames": 0.5}
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "rows.json").write_text(json.dumps([_row("poe", "a red ball rolls off a blue box", 0,
                                                               metrics=clip)]))
    assert main(["eval", "video", "--report", str(tmp_path / "v")]) == 0
    assert "IoU per frame 0.50 1.00  mean 0.750  exact frames 0.500" in capsys.readouterr().out


def test_eval_errors_are_one_line_with_exit_2(tmp_path, capsys):
    for argv, words in ((["shapes", "--ablations", "poe-nothing"], "--ablations: unknown 'poe-nothing'"),
                        (["shapes", "--option", "ess_threshold"], "--option 'ess_threshold': expected KEY=VALUE"),
                        (["shapes", "--tiers", "A", "--categories", "single,colors"],
                         "--categories: 'colors' is not a category of tier(s) A; known: single, "),
                        (["shapes", "--tiers", "C"], "--tiers 'C': name A, B or AB"),
                        (["physics", "--report", str(tmp_path / "none")], "--report: no"),
                        (["edit", "--variants", "replace,kept"], "--variants: unknown 'kept'"),
                        (["video", "--seeds", "0"], "--seeds 0: must be >= 1")):
        assert main(["eval", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("poegen: error: ") and words in err and err.count("\n") == 1, err


def test_anytime_table_counts_certified_precision_recall_and_nfe(capsys):
    from poegen.compare import Row
    from poegen.evaluate import anytime_report

    # poe: 4 runs; certified picks 3 (2 exact), exact picks 3 (2 certified); found at 100, 100, 300; one found none
    specs = [("p1", True, True, 100, 100), ("p2", True, True, 100, 100), ("p3", False, True, 300, 300),
             ("p4", True, False, None, 400)]
    rows = [Row(**_row("poe", p, 0, exact=e, certified=c, first_certified=f, nfe=n, fixed_nfe=200))
            for p, e, c, f, n in specs]
    rows += [Row(**_row("smc", p, 0, exact=True, certified=True, first_certified=50, nfe=50, fixed_nfe=200))
             for p, *_ in specs]
    anytime_report(rows, {p: ("A", "one") for p, *_ in specs})
    out = capsys.readouterr().out
    poe = next(line for line in out.splitlines() if line.startswith("A_poe_anytime"))
    assert "nfe_mean=225 nfe_vs_fixed=1.12" in poe and "first_certified_median=100" in poe
    assert "certified=0.750 precision=0.667 recall=0.667 strict=0.750" in poe
    smc = next(line for line in out.splitlines() if line.startswith("A_smc_anytime"))
    # to the first certified: smc 50 each; poe 100, 100, 300 and 400 (found none: what it spent); mean gap -175
    assert "first_certified_minus_poe=-175.000" in smc
