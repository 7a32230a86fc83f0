"""Configuration, parameters and job specs: bad input is caught on load, by name."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pipeline.config import load_config, load_job
from pipeline.errors import ConfigError
from pipeline.parameters import load_parameters

GOOD_CONFIG = """
datasets:
  tt:
    files: [nano_tt_v12.root]
    metadata: {sample: TTbar, year: 2022_preEE, isMC: true}
calibrators: [jet_calibration]
variations:
  shape:
    common: {inclusive: [jet_calibration]}
histograms:
  jet_pt:
    axes: [{expr: Jet.pt, bins: 10, start: 0, stop: 200}]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config_loads(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", GOOD_CONFIG))
    assert cfg.variations_for_sample("TTbar") == ["jet_calibration"]
    assert [c.name for c in cfg.calibrator_classes()] == ["jet_calibration"]


@pytest.mark.parametrize(
    ("old", "new", "key_path", "message"),
    [
        ("histograms:", "histogramz:", "histogramz", "unknown key"),
        ("bins: 10", "bins: ten", "histograms.jet_pt.axes.0.bins", "integer"),
        ("isMC: true", "isMC: true, xsec: lots", "datasets.tt.metadata.xsec", "number"),
        ("start: 0, stop: 200", "start: 0", "histograms.jet_pt.axes.0",
         "'bins', 'start' and 'stop'"),
        ("calibrators: [jet_calibration]", "calibrators: [jet_calibraton]", r"calibrators\[0\]",
         "valid calibrators are: .*jet_calibration"),
        ("inclusive: [jet_calibration]", "inclusive: [electron_scale]",
         r"variations.shape.common.inclusive\[0\]", "unknown calibrator 'electron_scale'"),
        ("isMC: true}", "isMC: false}", "datasets.tt.metadata", "needs its run 'era'"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, old, new, key_path, message):
    assert old in GOOD_CONFIG
    path = write(tmp_path, "bad.yaml", GOOD_CONFIG.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text
    assert re.search(key_path, text), text
    assert re.search(message, text), text


def test_unknown_weight_and_unapplied_weight_variation(tmp_path):
    text = GOOD_CONFIG + "weights:\n  common: {inclusive: [pilup]}\n"
    with pytest.raises(ConfigError, match=r"weights.common.inclusive\[0\]: unknown weight "
                                          r"'pilup'; valid weights are: .*pileup"):
        load_config(write(tmp_path, "w.yaml", text))
    text = GOOD_CONFIG.replace("variations:\n", "variations:\n  weights:\n"
                               "    common: {inclusive: [pileup]}\n")
    with pytest.raises(ConfigError, match="variations of weight 'pileup' asked for sample "
                                          "'TTbar', which does not apply it"):
        load_config(write(tmp_path, "w2.yaml", text))


def test_bysample_unknown_sample(tmp_path):
    text = GOOD_CONFIG.replace(
        "    common: {inclusive: [jet_calibration]}",
        "    common: {inclusive: []}\n    bysample:\n      TTbra: {inclusive: [jet_calibration]}",
    )
    with pytest.raises(ConfigError, match=r"variations.shape.bysample.TTbra: unknown sample; "
                                          r"samples are: TTbar"):
        load_config(write(tmp_path, "c.yaml", text))


def test_bysample_variations(tmp_path):
    text = GOOD_CONFIG.replace(
        "    common: {inclusive: [jet_calibration]}",
        "    common: {inclusive: []}\n    bysample:\n      TTbar: {inclusive: [jet_calibration]}",
    )
    cfg = load_config(write(tmp_path, "d.yaml", text))
    assert cfg.variations_for_sample("TTbar") == ["jet_calibration"]
    assert cfg.variations_for_sample("Other") == []


def test_job_spec_errors(tmp_path):
    write(tmp_path, "cfg.yaml", GOOD_CONFIG)
    job = write(tmp_path, "job.yaml", "config: cfg.yaml\noutput: out\ndatasets: [tt, ttt]\n")
    with pytest.raises(ConfigError, match=r"job.yaml.*\n.*datasets\[1\]: unknown dataset 'ttt'"):
        load_job(job)
    job = write(tmp_path, "job2.yaml", "config: cfg.yaml\noutput: out\nsitee: local\n")
    with pytest.raises(ConfigError, match="sitee: unknown key"):
        load_job(job)
    job = write(tmp_path, "job3.yaml", "config: nope.yaml\noutput: out\n")
    with pytest.raises(ConfigError, match="config: analysis config .*nope.yaml not found"):
        load_job(job)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml(.|\n)*file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "broken.yaml", "datasets: [unclosed\n"))


def test_parameter_typo_names_file_and_key(tmp_path):
    path = write(tmp_path, "p.yaml", """
        jets_calibration:
          apply_jec_MC:
            2022_preEE: {AK4PFPuppi: maybe}
          variatons: {}
    """)
    with pytest.raises(ConfigError) as info:
        load_parameters([path])
    text = str(info.value)
    assert str(path) in text
    assert "jets_calibration.apply_jec_MC.2022_preEE.AK4PFPuppi" in text
    assert "jets_calibration.variatons: unknown key" in text


def test_enabled_table_unknown_calibrator(tmp_path):
    path = write(tmp_path, "p.yaml", "calibrators_enabled: {jet_calib: {2022_preEE: false}}\n")
    with pytest.raises(ConfigError, match="calibrators_enabled.jet_calib: unknown calibrator; "
                                          "valid calibrators are: .*jet_calibration"):
        load_parameters([path])


def test_user_sections_merge_over_defaults(tmp_path):
    path = write(tmp_path, "p.yaml", "my_calibrator_config: {scale: 1.5}\n")
    params = load_parameters([path])
    assert params.my_calibrator_config.scale == 1.5
    assert params.jets_calibration.collection["2022_preEE"].AK4PFPuppi == "Jet"


def test_demo_job_is_valid(project_root):
    job, cfg = load_job(project_root / "jobs" / "demo.yaml")
    assert job.site == "local"
    assert "jet_calibration" in cfg.variations_for_sample("TTbar")
