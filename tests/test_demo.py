"""The demo: the shipped base (loads, deterministic, has learned the domain, can draw the test defects), its
reference segmenter, the study's ranges, and `dualanodiff demo --quick`."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import jaccard_score

from dualanodiff.demo.alignment import iou, load_segmenter, mask_alignment, through_vae
from dualanodiff.demo.base import ASSETS, META_NAME, WEIGHTS_NAME, demo_base_folder, load_demo_base
from dualanodiff.errors import InputError
from dualanodiff.model.base import build_base, load_base
from dualanodiff.synthetic import synthetic_sample


@pytest.fixture(scope="module")
def demo_base():
    return load_demo_base()


def _normals(n: int = 6) -> torch.Tensor:
    # Split "testcheck": renders the pretraining never saw (it used "pretrain").
    imgs = [
        synthetic_sample(c, "testcheck", "good", i, 0, 64).image for c in ("pill", "weave") for i in range(n)
    ]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_shipped_weights_are_small_fp16_and_described():
    weights = ASSETS / WEIGHTS_NAME
    assert weights.stat().st_size <= 25 * 10**6  # the issue's limit
    meta = json.loads((ASSETS / META_NAME).read_text())
    assert meta["config"]["resolution"] == 64 and meta["scaling_factor"] > 0
    assert set(meta["segmenters"]) == {"pill", "weave"}
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    for prefix in ("unet.", "vae.", "segmenter.pill.", "segmenter.weave."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any(k.startswith("text_encoder.") for k in keys)  # rebuilt from its seed instead


def test_shipped_base_loads_deterministically(demo_base):
    again = load_demo_base()
    for a, b in (
        (demo_base.unet, again.unet),
        (demo_base.vae, again.vae),
        (demo_base.text_encoder, again.text_encoder),
    ):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # SD 1.5's layout: 16 transformer blocks, 32 attention layers; a 4x VAE: 16x16 latents for 64 px.
    assert len(demo_base.unet.attn_processors) == 32
    assert demo_base.unet.config.sample_size == 16 and len(demo_base.vae.config.block_out_channels) == 3
    assert (
        demo_base.vae.config.scaling_factor == json.loads((ASSETS / META_NAME).read_text())["scaling_factor"]
    )


def test_diffusers_folder_round_trip(demo_base, tmp_path):
    folder = demo_base_folder(tmp_path / "base")
    loaded = load_base(folder)
    for a, b in ((demo_base.unet, loaded.unet), (demo_base.vae, loaded.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.vae.config.scaling_factor == demo_base.vae.config.scaling_factor


@torch.no_grad()
def test_vae_reconstructs_unseen_synthetic_images_unlike_a_random_one(demo_base):
    x = _normals()

    def err(vae):
        return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())

    trained, random = err(demo_base.vae), err(build_base("tiny").vae)
    assert trained < 0.15 < random  # mean absolute error in [-1, 1] units


@torch.no_grad()
def test_vae_draws_the_test_defects_it_never_saw(demo_base):
    """The pretraining saw generic marks, never the test types; still, a pill/spot pit must come back from the
    VAE close to where and what it was, or the adapters have nothing to learn with."""
    samples = [synthetic_sample("pill", "testcheck", "spot", i, 0, 64) for i in range(8)]
    images = np.stack([s.image for s in samples])
    rec = through_vae(demo_base.vae, images).astype(float)
    for s, r in zip(samples, rec):
        to_defect = np.abs(r[s.mask] - s.image[s.mask].astype(float)).mean()
        to_clean = np.abs(r[s.mask] - s.clean[s.mask].astype(float)).mean()
        assert to_defect < to_clean  # the reconstruction is nearer the defect than the clean surface


@torch.no_grad()
def test_vae_keeps_the_part_images_mid_grey_canvas(demo_base):
    """The part branch's target is the defect on mid-grey (0 in [-1, 1]): the VAE must give grey back."""
    s = synthetic_sample("pill", "testcheck", "stain", 0, 0, 64)
    x = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    part = x * torch.from_numpy(s.mask)[None, None].float()
    rec = demo_base.vae.decode(demo_base.vae.encode(part).latent_dist.mean).sample
    outside = torch.from_numpy(~s.mask)
    assert float(rec[0][:, outside].abs().mean()) < 0.06  # about 8 grey levels of 255


@torch.no_grad()
def test_unet_predicts_noise_on_unseen_normal_latents(demo_base):
    """The pretrained UNet's epsilon error is far below the random UNet's (about 1, the noise variance)."""
    from diffusers import DDPMScheduler

    vae = demo_base.vae
    z0 = vae.encode(_normals()).latent_dist.mean * vae.config.scaling_factor
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.full((z0.shape[0],), 400)
    zt = DDPMScheduler.from_config(demo_base.scheduler.config).add_noise(z0, noise, t)
    from dualanodiff.model.encode import encode_prompts

    text = encode_prompts(demo_base.tokenizer, demo_base.text_encoder, ["pill"] * 6 + ["weave"] * 6)
    trained = float((demo_base.unet(zt, t, text).sample - noise).pow(2).mean())
    random = float((build_base("tiny").unet(zt, t, text).sample - noise).pow(2).mean())
    assert trained < 0.5 * random


def test_missing_weights_name_the_folder(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path).replace("\\", "\\\\") + ".*demo_base.safetensors"):
        load_demo_base(tmp_path)


def test_reference_segmenter_finds_real_defects_and_not_normal_pixels(demo_base):
    """On fresh real renders of pill/spot (decoded by the VAE, as generated images are), the shipped segmenter's
    masks overlap the ground truth; on normal renders it marks almost nothing."""
    seg = load_segmenter("pill", anomaly="spot")
    spots = [synthetic_sample("pill", "testcheck", "spot", i, 0, 64) for i in range(8)]
    decoded = through_vae(demo_base.vae, np.stack([s.image for s in spots]))
    assert mask_alignment(seg, list(decoded), [s.mask for s in spots])["iou_median"] > 0.4
    normals = np.stack([synthetic_sample("pill", "testcheck", "good", i, 0, 64).image for i in range(8)])
    from dualanodiff.demo.alignment import segment

    assert segment(seg, list(through_vae(demo_base.vae, normals)), seg.threshold).mean() < 0.01


def test_a_run_is_set_beside_the_study_row_of_its_own_type():
    """Inside the study's range widened by one sd: normal; below it: flagged; the range the verdict uses is the
    one printed; another type or other settings: no verdict."""
    from dualanodiff.demo import DemoConfig
    from dualanodiff.demo.expected import VERDICT_RULE, compare_with_study

    cfg = DemoConfig().resolved()
    row = {
        "seeds": 3,
        "settings": {"train_steps": cfg.train_steps},
        "figures": {
            "pixel AP, DualAnoDiff": {
                "mean": 50.0,
                "sd": 5.0,
                "min": 45.0,
                "max": 55.0,
                "values": [45, 50, 55],
            },
            "median mask IoU, DualAnoDiff": {"mean": 0.6, "sd": 0.05, "min": 0.55, "max": 0.65},
        },
    }
    expected = {"types": {"weave/hole": row}}
    summary = {
        "localization": [{"training data": "DualAnoDiff", "pixel AP": 41.0}],
        "alignment": {"dualanodiff": {"iou_median": 0.2}},
    }
    checks = compare_with_study(summary, cfg, expected)
    assert checks["rule"] == VERDICT_RULE and "weave/hole, 3 seeds" in checks["why"]
    rows = {r["figure"]: r for r in checks["rows"]}
    assert {k: r["verdict"] for k, r in rows.items()} == {
        "pixel AP, DualAnoDiff": "normal",
        "median mask IoU, DualAnoDiff": "LOWER than the study",
    }
    assert rows["pixel AP, DualAnoDiff"]["normal range"] == "40 to 60"  # 41 lies inside the printed range
    assert rows["pixel AP, DualAnoDiff"]["study seeds"] == "45, 50, 55"
    stain = compare_with_study(summary, DemoConfig(anomaly="stain").resolved(), expected)
    assert not stain["applies"] and "no row for weave/stain (types measured: weave/hole)" in stain["why"]
    expected["types"]["weave/stain"] = row
    assert compare_with_study(summary, DemoConfig(anomaly="stain").resolved(), expected)["applies"]
    other = compare_with_study(summary, DemoConfig(quick=True).resolved(), expected)
    assert not other["applies"] and "train_steps" in other["why"] and other["rows"] == []


def test_the_report_says_in_words_when_pairs_made_the_detector_worse_than_none():
    from dualanodiff.demo.report import worse_than_none

    rows = [
        {"training data": "DualAnoDiff", "pixel AP": 0.5},
        {"training data": "Crop&Paste", "pixel AP": 17.5},
        {"training data": "no generated data", "pixel AP": 0.7},
    ]
    text = worse_than_none(rows)
    assert "trained with DualAnoDiff (0.5) pairs" in text and "normal images alone (0.7)" in text
    assert "Crop&Paste" not in text
    rows[0]["pixel AP"] = 0.7  # a tie is not worse
    assert worse_than_none(rows) is None


def test_iou_matches_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16)) < 0.3, rng.random((16, 16)) < 0.4
    assert iou(a, b) == jaccard_score(a.ravel(), b.ravel())  # one division of the same two counts: exact
    assert iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_demo_rejects_unknown_type(tmp_path):
    from dualanodiff.demo import DemoConfig, run_demo

    with pytest.raises(InputError, match="weave/spot"):
        run_demo(DemoConfig(out=str(tmp_path), quick=True, anomaly="spot", progress=False))


class _Report(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tag: str | None = None
        self.h2: list[str] = []
        self.td: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.tag == "h2":
            self.h2.append(data.strip())
        elif self.tag == "td":
            self.td.append(data.strip())

    def handle_endtag(self, tag):
        self.tag = None


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys, caplog):
    import logging

    from dualanodiff.cli import main

    out = tmp_path / "demo"
    with caplog.at_level(logging.INFO, logger="dualanodiff.demo.run"):
        assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    assert printed.startswith("demo finished in ") and str(report.resolve()) in printed
    assert "[demo 5/5]" in caplog.text  # the stages are log lines

    parsed = _Report()
    parsed.feed(report.read_text(encoding="utf-8"))
    expected = [
        "What you are looking at",
        "Is this run normal?",
        "Few-shot training images",
        "Generated pairs: whole image / anomaly part / mask overlay",
        "Baseline: Crop&Paste pairs",
        "Downstream localization",
        "Mask alignment",
        "Adapter training loss",
        "Probe loss: what the adapters learn",
        "Settings",
    ]
    for heading in expected:
        assert any(h.startswith(heading) for h in parsed.h2), (heading, parsed.h2)
    for label in ("DualAnoDiff", "Crop&Paste", "no generated data"):
        assert label in parsed.td
    # Every picture is embedded and decodes; weave/hole has 15 images, so 5 few-shot (image, overlay) pairs.
    assert all(s.startswith("data:image/png;base64,") for s in parsed.srcs)
    for s in parsed.srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert (
        len(parsed.srcs) >= 2 * 5 + 3 * 8 + 2 * 6 + 2
    )  # few-shot, triples, Crop&Paste, loss and probe charts

    # --no-progress hides the bars only: the stage lines and the final line stay (a resumed run, every step done).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dualanodiff.demo.run"):
        assert main(["demo", "--quick", "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    again = capsys.readouterr()
    assert "[demo 1/5]" in caplog.text and "[demo 5/5]" in caplog.text
    assert "Open the report" in again.out and "%|" not in again.err

    results = json.loads((out / "demo_results.json").read_text())
    assert {r["training data"] for r in results["localization"]} == {
        "DualAnoDiff",
        "Crop&Paste",
        "no generated data",
    }
    assert results["timings"]["total_s"] > 0
    probe = results["loss"]["probe"]  # --quick: 12 steps, a probe every 4
    assert probe["steps"] == [0, 12] and probe["last"] < probe["first"]

    # The printed `generate` line continues from the demo's adapters with no sampling flag: they carry the
    # demo's recipe (the full demo's sampler, guidance, noise and mask settings).
    import shlex

    from dualanodiff.demo.config import sampling_recipe

    line = next(x for x in printed.splitlines() if x.startswith("More pairs from its adapters: "))
    argv = shlex.split(line.split(": ", 1)[1])[1:]
    argv[argv.index("--num-pairs") + 1] = "2"
    assert main([*argv, "--steps", "2", "--max-area", "1", "--no-progress"]) == 0
    config = json.loads((out / "more-pairs" / "config.json").read_text())
    recipe = {k: v for k, v in sampling_recipe().items() if k != "steps"}
    assert config["preset"] == "adapters" and {k: config[k] for k in recipe} == recipe


def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_tables_are_the_json_mean_sd_and_paired_differences(tmp_path):
    """The README's table is computed from study.json: mean and sample sd over seeds, paired differences."""
    import statistics

    study_mod, tables = _script("miniature_study"), _script("miniature_tables")
    ddf, cp = "DualAnoDiff (DPM-Solver++ 20 steps)", "Crop&Paste"
    ap = {ddf: [40.0, 50.0, 45.0], cp: [30.0, 52.0, 35.0]}
    per_seed = [
        {
            "seed": s,
            "runs": {
                m: {"pixel AP": ap[m][s], "pixel AUROC": 90.0, "AU-PRO": 80.0, "image AUROC": 99.0}
                for m in ap
            },
            "figures": {"pixel AP, DualAnoDiff": ap[ddf][s]},
        }
        for s in range(3)
    ]
    for s in per_seed:
        s["runs"][ddf].update(kept=60, generated=64, iou_median=0.5 + 0.1 * s["seed"])
        s["runs"]["DualAnoDiff, guidance 2.5"] = {"pixel AP": 40.0, "iou_median": 0.45 + 0.05 * s["seed"]}
        probe = {"first": 0.1, "last": 0.08, "fall_pct": 20.0, "global_first": 0.14, "global_last": 0.11}
        s["demo"] = {"loss": {"probe": {**probe, "part_first": 0.06, "part_last": 0.05}}}
    from dataclasses import asdict

    from dualanodiff.demo import DemoConfig

    study = {
        "settings": asdict(DemoConfig().resolved()),
        "seeds": [0, 1, 2],
        "stack": {"torch": "2.x", "python": "3.11", "machine": "x86_64", "threads": "1"},
        "per_seed": per_seed,
        "summary": study_mod.aggregate(per_seed),
    }
    table = tables.study_table(study)
    mean, sd = statistics.fmean(ap[ddf]), statistics.stdev(ap[ddf])
    assert f"| {ddf} | **{mean:.1f} ± {sd:.1f}** |" in table  # the best mean is bold
    diffs = [a - b for a, b in zip(ap[ddf], ap[cp])]
    assert f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} | +10.0, -2.0, +10.0 |" in table
    assert "0.60 ± 0.10" in table and "94 ± 0" in table  # median IoU, kept %
    # The guidance variant's IoU against the demo's, seed by seed: -0.05, -0.10, -0.15.
    assert "| DualAnoDiff, guidance 2.5 minus DualAnoDiff (DPM-Solver++ 20 steps) | -0.100 ± 0.050 |" in table
    assert (
        "seed 2: 0.1000 to 0.0800 (-20.0 %; whole-image rows 0.1400 to 0.1100, part rows 0.0600 to 0.0500)"
        in table
    )
    before = {"types": {"pill/spot": {"seeds": 3}}, "times": {"full": {"wall_s": 1.0}}}
    expected = tables.expected_file([study], None, before)
    assert expected["types"]["weave/hole"]["figures"]["pixel AP, DualAnoDiff"]["mean"] == round(mean, 3)
    assert expected["types"]["pill/spot"] == before["types"]["pill/spot"]  # another type's row is kept
    assert expected["times"] == before["times"]  # and the measured times, when no new ones are given

    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- miniature-table:start -->\nold\n<!-- miniature-table:end -->\nb\n")
    tables.replace_between(doc, "miniature-table", table)
    assert doc.read_text() == f"a\n<!-- miniature-table:start -->\n{table}<!-- miniature-table:end -->\nb\n"


def test_every_type_table_is_the_studies_means_verdicts_and_a_sound_alignment_measure():
    import statistics

    study_mod, tables = _script("miniature_study"), _script("miniature_tables")
    demo, paper, placed, cp = tables.DEMO_RUN, tables.PAPER_RUN, tables.PLACED_RUN, "Crop&Paste"

    def study(category, anomaly, ap, reference_iou):
        per_seed = [
            {
                "seed": s,
                "reference_iou": reference_iou,
                "runs": {
                    m: {
                        "pixel AP": ap[m][s],
                        "iou_median": 0.6,
                        "part_match": 0.9,
                        "kept": 32,
                        "generated": 64,
                    }
                    for m in ap
                },
            }
            for s in range(3)
        ]
        settings = {"category": category, "anomaly": anomaly, "train_steps": 750, "num_pairs": 64,
                    "loc_epochs": 20, "loc_samples_per_epoch": 128, "resolution": 64}  # fmt: skip
        return {"settings": settings, "seeds": [0, 1, 2], "commit": "abc1234", "per_seed": per_seed,
                "stack": {"torch": "2.x", "python": "3.11", "machine": "x86_64", "threads": "1"},
                "summary": study_mod.aggregate(per_seed)}  # fmt: skip

    hole = study("weave", "hole", {demo: [90, 95, 100], paper: [80, 81, 82], placed: [70, 90, 95],
                                   cp: [91, 92, 93]}, 0.9)  # fmt: skip
    crack = study("pill", "crack", {demo: [1, 2, 3], paper: [5, 6, 7], placed: [1, 1, 1],
                                    cp: [10, 20, 30]}, 0.12)  # fmt: skip
    text = tables.types_tables([hole, crack])
    assert "| `pill/crack` |" in text.split("| `weave/hole` |")[0]  # types in order
    # Mean over types of the per-type means: demo's (2 + 95) / 2, Crop&Paste (20 + 92) / 2.
    assert f"| mean over the 2 types | {statistics.fmean([2, 95]):.1f} | " in text
    # weave/hole demo minus C&P per seed: -1, +3, +7 -> +3.0 ± 4.0: a tie; paper: -11 each: loses.
    assert "| `weave/hole` | +3.0 ± 4.0 (tie) | -11.0 ± 0.0 (loses) |" in text
    assert "| wins / ties / losses | 0 / 1 / 1 | 0 / 0 / 2 |" in text
    # The segmenter finds real cracks badly (0.12): the part match stands in for the IoU there.
    assert "| `pill/crack` | 0.12 (too low: part match used) | 0.90 ± 0.00 *pm* |" in text
    assert "| `weave/hole` | 0.90 | 0.60 ± 0.00 |" in text
    # The best mode over types is the demo's (48.5) against Crop&Paste's 56.0.
    assert "(DualAnoDiff, demo's sampling, mean pixel AP 48.5) below Crop&Paste (56.0): not reached" in text
    assert "not readable on pill/crack" in text


def test_part_match_is_best_where_the_part_was_cut_and_not_for_a_defect_elsewhere():
    from dualanodiff.demo.alignment import cut_out, part_match_rank

    rng = np.random.default_rng(0)
    image = rng.integers(90, 110, (64, 64, 3)).astype(np.uint8)
    image[10:16, 10:16] = (200, 40, 40)  # the defect
    here = np.zeros((64, 64), bool)
    here[10:16, 10:16] = True
    assert part_match_rank(image, cut_out(image, here), here) == 1.0
    elsewhere = np.roll(here, (30, 30), axis=(0, 1))  # a part whose defect is where the image has none
    part = np.full_like(image, 128)
    part[elsewhere] = (200, 40, 40)
    assert part_match_rank(image, part, elsewhere) < 0.5
    assert part_match_rank(image, part, np.zeros((64, 64), bool)) is None


def test_times_without_a_study_give_the_cpu_row_only():
    """Before any study: the measured CPU time alone sets the run beside the benchmark machine, and says so."""
    from dualanodiff.demo import DemoConfig
    from dualanodiff.demo.expected import compare_with_study

    cfg = DemoConfig().resolved()
    expected = {"times": {cfg.mode: {"wall_s": 200.0, "cpu_s": 199.0, "cpu_in_run_s": 100.0, "machine": "m"}}}
    summary = {"localization": [{"training data": "DualAnoDiff", "pixel AP": 41.0}], "timings": {}}
    for mine, verdict in ((140.0, "normal"), (160.0, "SLOWER than measured (another CPU, or other load)")):
        summary["timings"]["cpu_before_report_s"] = mine
        checks = compare_with_study(summary, cfg, expected)
        assert checks["applies"] and "no row for weave/hole (types measured: none)" in checks["why"]
        assert [(r["figure"], r["verdict"]) for r in checks["rows"]] == [
            ("CPU seconds of the run (before the report)", verdict)
        ]
    # A resumed run skipped its finished steps: a short time is no sign of a fast machine.
    summary["timings"]["cpu_before_report_s"] = 0.2
    summary["steps_finished_before"] = 6
    (row,) = compare_with_study(summary, cfg, expected)["rows"]
    assert row["verdict"] == "not comparable: 6 step(s) had finished before and were skipped"


@pytest.mark.slow
def test_study_runs_every_variant_end_to_end(tmp_path, monkeypatch):
    """The study at the demo's --quick sizes: every variant trains, generates and detects, and study.json has
    each one's figures (the perlin variant once went missing: its rows were not read back)."""
    study_mod = _script("miniature_study")
    monkeypatch.setattr("sys.argv", ["miniature_study.py", "--out", str(tmp_path), "--seeds", "0", "--quick"])
    study_mod.main()
    study = json.loads((tmp_path / "study.json").read_text())
    runs = study["per_seed"][0]["runs"]
    labels = {label for label, _, _ in study_mod.VARIANTS.values()}
    labels |= {"DualAnoDiff (DPM-Solver++ 20 steps)", "Crop&Paste", "no generated data"}
    assert set(runs) == labels
    for label, run in runs.items():
        assert "error" not in run, (label, run)
        assert 0.0 <= run["pixel AP"] <= 100.0, label
    assert set(study["summary"]) == labels
    assert study["settings"]["quick"] is True


def test_guidance_sweep_refuses_an_unknown_initial_noise_before_any_work(tmp_path, monkeypatch, capsys):
    """--initial-noise names a setting the sweep cannot sample: one line naming the flag, exit 2, nothing written."""
    sweep = _script("demo_guidance_sweep")
    argv = ["demo_guidance_sweep.py", "--study", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
            "--initial-noise", "shared,bogus"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main()
    assert exit_info.value.code == 2
    assert "--initial-noise: choose from independent, shared; got 'shared,bogus'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
