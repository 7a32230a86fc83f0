"""Configuration, parameters and job specs: bad input is caught on load, by name."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pipeline.analysis.loading import calibrator_classes, load_config, load_job, load_parameters
from pipeline.calibration import Calibrator
from pipeline.errors import ConfigError

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
    assert [c.name for c in calibrator_classes(cfg)] == ["jet_calibration"]


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
    class Reads(Calibrator):  # abstract: never run, it only declares its section
        name = "test_reads_my_calibrator_config"
        params_section = "my_calibrator_config"

    path = write(tmp_path, "p.yaml", "my_calibrator_config: {scale: 1.5}\n")
    params = load_parameters([path], [Reads])
    assert params.my_calibrator_config.scale == 1.5
    assert params.jets_calibration.collection["2022_preEE"].AK4PFPuppi == "Jet"


# --- parameter typos: unknown sections and jet types ---------------------------------------

DEFAULT_SECTIONS = ["calibrators_enabled", "electron_scale_and_smearing", "event_weights",
                    "jets_calibration", "met_rescaling", "photon_scale_and_smearing",
                    "selections"]


def _parameter_error(path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_parameters([path], **kwargs)
    text = str(info.value)
    assert str(path) in text, text
    return text


def test_unknown_parameter_section_is_refused(tmp_path):
    path = write(tmp_path, "p.yaml", """
        jets_calibraton:
          apply_jec_MC:
            2022_preEE: {AK4PFPuppi: false}
    """)
    text = _parameter_error(path)
    assert "jets_calibraton: unknown parameter section" in text
    listed = re.search(r"valid sections are: ([^\n(;]*)", text).group(1)
    names = [n.strip() for n in listed.split(",")]
    assert set(DEFAULT_SECTIONS) <= set(names), names
    assert "jets_calibraton" not in names


@pytest.mark.parametrize("key", ["apply_jec_MC", "apply_jec_Data", "apply_jer_MC",
                                 "sort_by_pt", "variations", "collection"])
def test_unknown_jet_type_is_refused(tmp_path, key):
    value = {"variations": "[JES_Total]", "collection": "Jet"}.get(key, "true")
    path = write(tmp_path, "p.yaml", f"""
        jets_calibration:
          {key}:
            2022_preEE: {{AK4PFPuppy: {value}}}
    """)
    text = _parameter_error(path)
    assert f"jets_calibration.{key}.2022_preEE.AK4PFPuppy: unknown jet type" in text, text
    assert re.search(r"jet types are: AK4PFPuppi, AK8PFPuppi", text), text


def test_unknown_jet_type_of_met_is_refused(tmp_path):
    path = write(tmp_path, "p.yaml", "met_rescaling:\n  2022_preEE: {jet_type: AK4PFPuppy}\n")
    text = _parameter_error(path)
    assert "met_rescaling.2022_preEE.jet_type: unknown jet type 'AK4PFPuppy'" in text, text
    assert "jet types are: AK4PFPuppi, AK8PFPuppi" in text, text


USER_SECTION_CALIBRATOR = """
from pipeline.calibration import Calibrator


class ReadsSection(Calibrator):
    name = "user_reads_section"
    params_section = "my_scale_settings"
    calibrated_collections = ["Jet.pt"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        return {"Jet.pt": events["Jet"].pt * self.params.my_scale_settings.scale}
"""


def _job_with_params(tmp_path: Path, calibrators: str, params: str) -> Path:
    write(tmp_path, "params.yaml", params)
    write(tmp_path, "cfg.yaml", GOOD_CONFIG.replace("calibrators: [jet_calibration]",
                                                    f"calibrators: {calibrators}"))
    return write(tmp_path, "job.yaml", "config: cfg.yaml\noutput: out\n"
                                       "parameters: [params.yaml]\n")


def test_user_calibrators_declare_their_sections(tmp_path, user_modules):
    (user_modules / "calibrew_user_section.py").write_text(USER_SECTION_CALIBRATOR)
    params = "my_scale_settings: {scale: 1.5}\n"
    # declared by a calibrator of the sequence: valid
    job = _job_with_params(tmp_path, "[jet_calibration, 'calibrew_user_section:ReadsSection']",
                           params)
    load_job(job)
    # the same section with a sequence that does not read it: refused, naming the file
    job = _job_with_params(tmp_path, "[jet_calibration]", params)
    with pytest.raises(ConfigError) as info:
        load_job(job)
    text = str(info.value)
    assert str(tmp_path / "params.yaml") in text
    assert "my_scale_settings: unknown parameter section" in text
    assert "declared by calibrator 'user_reads_section', which is not in the sequence" in text


def test_a_config_parameter_typo_fails_when_the_config_loads(tmp_path):
    write(tmp_path, "params.yaml", "jets_calibration:\n  apply_jec_MC:\n"
                                   "    2022_preEE: {AK4PFPuppy: false}\n")
    path = write(tmp_path, "cfg.yaml", "parameters: [params.yaml]\n" + GOOD_CONFIG)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(tmp_path / "params.yaml") in text
    assert "jets_calibration.apply_jec_MC.2022_preEE.AK4PFPuppy: unknown jet type" in text


def test_demo_job_is_valid(project_root):
    job, cfg = load_job(project_root / "jobs" / "demo.yaml")
    assert job.site == "local"
    assert "jet_calibration" in cfg.variations_for_sample("TTbar")


# --- calibrators named by import path: why the import failed ------------------------------

USER_CALIBRATOR = """
from pipeline.calibration import Calibrator


class {cls}(Calibrator):
    name = "{name}"
    calibrated_collections = ["Jet.pt"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        return {{"Jet.pt": events["Jet"].pt}}
"""


def _config_with_calibrator(tmp_path: Path, entry: str) -> Path:
    text = GOOD_CONFIG.replace("calibrators: [jet_calibration]",
                               f"calibrators: [jet_calibration, '{entry}']")
    return write(tmp_path, "user.yaml", text)


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "calibrators[1]" in text, text
    assert "unknown calibrator" not in text, text
    return text


def test_user_module_not_found(tmp_path, user_modules):
    text = _load_error(_config_with_calibrator(tmp_path, "calibrew_no_such_module_x:Cal"))
    assert "module 'calibrew_no_such_module_x' not found" in text
    assert "PYTHONPATH" in text


def test_user_module_dependency_missing(tmp_path, user_modules):
    (user_modules / "calibrew_user_dep.py").write_text(
        "import os\nimport calibrew_missing_dependency_y\n" + USER_CALIBRATOR.format(
            cls="DepCal", name="user_dep_cal"))
    text = _load_error(_config_with_calibrator(tmp_path, "calibrew_user_dep:DepCal"))
    assert "module 'calibrew_user_dep' raised while importing" in text
    assert "ModuleNotFoundError: No module named 'calibrew_missing_dependency_y'" in text
    assert re.search(r"calibrew_user_dep\.py, line 2\b", text), text


def test_user_module_syntax_error(tmp_path, user_modules):
    (user_modules / "calibrew_user_syntax.py").write_text("x = 1\n\ndef broken(:\n    pass\n")
    text = _load_error(_config_with_calibrator(tmp_path, "calibrew_user_syntax:Cal"))
    assert "module 'calibrew_user_syntax' raised while importing: SyntaxError" in text
    assert re.search(r"calibrew_user_syntax\.py.*line 3\b", text), text


def test_user_module_raises_while_importing(tmp_path, user_modules):
    (user_modules / "calibrew_user_raises.py").write_text(
        "SCALE = 1.0\nraise RuntimeError('payload missing')\n")
    text = _load_error(_config_with_calibrator(tmp_path, "calibrew_user_raises:Cal"))
    assert "module 'calibrew_user_raises' raised while importing: RuntimeError: payload " \
           "missing" in text
    assert re.search(r"calibrew_user_raises\.py, line 2\b", text), text


def test_user_module_attribute_missing(tmp_path, user_modules):
    (user_modules / "calibrew_user_attr.py").write_text(
        USER_CALIBRATOR.format(cls="ScaleJets", name="user_attr_scale_jets"))
    text = _load_error(_config_with_calibrator(tmp_path, "calibrew_user_attr:ScaleJet"))
    assert "module 'calibrew_user_attr'" in text and "has no attribute 'ScaleJet'" in text
    assert "calibrators defined there: ScaleJets" in text


def test_user_module_loads(tmp_path, user_modules):
    (user_modules / "calibrew_user_good.py").write_text(
        USER_CALIBRATOR.format(cls="GoodCal", name="user_good_cal"))
    cfg = load_config(_config_with_calibrator(tmp_path, "calibrew_user_good:GoodCal"))
    assert [c.name for c in calibrator_classes(cfg)] == ["jet_calibration", "user_good_cal"]
