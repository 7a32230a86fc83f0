"""The calibrator API of seed 000, on real NanoAOD, eager and lazy."""

from __future__ import annotations

import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.calibration import Calibrator, CalibratorsManager
from pipeline.calibration.manager import OriginalCollections
from pipeline.config.plugins import NameClashError
from pipeline.errors import CalibrationError, UnknownNameError

# --- the two examples of seed 000, as a user writes them ---------------------------------


class MyCustomCalibrator(Calibrator):
    name = "my_custom_calibrator"
    has_variations = True
    isMC_only = False
    calibrated_collections = ["MyObject.pt", "MyObject.mass"]
    params_section = "my_calibrator_config"  # the parameters section it reads

    def __init__(self, params, metadata, **kwargs):
        super().__init__(params, metadata, **kwargs)
        # Access configuration
        self.my_config = self.params.my_calibrator_config

    def calculate_scale_factor(self, events):
        return self.my_config.scale

    def initialize(self, events):
        # Prepare correction factors
        self.scale_factor = self.calculate_scale_factor(events)

        # Define available variations
        if self.isMC:
            self._variations = ["myUncertaintyUp", "myUncertaintyDown"]
        else:
            self._variations = []

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        # Get the objects to calibrate
        objects = events["MyObject"]

        # Apply nominal correction
        corrected_pt = objects.pt * self.scale_factor
        corrected_mass = objects.mass * self.scale_factor

        # Apply systematic variations
        if variation == "myUncertaintyUp":
            corrected_pt = corrected_pt * 1.02
        elif variation == "myUncertaintyDown":
            corrected_pt = corrected_pt * 0.98

        return {"MyObject.pt": corrected_pt, "MyObject.mass": corrected_mass}


class AdvancedCalibrator(Calibrator):
    name = "advanced_calibrator"
    has_variations = True
    isMC_only = True
    calibrated_collections = ["DerivedQuantity"]

    def compute_derived_quantity(self, original_jets, calibrated_jets, variation):
        return calibrated_jets.pt / original_jets.pt

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        # Check dependencies
        if "jet_calibration" not in already_applied_calibrators:
            raise ValueError("This calibrator requires jet_calibration to be applied first")

        # Use original jets if needed for some calculation
        if "Jet" in orig_colls:
            original_jets = orig_colls["Jet"]

        # Use calibrated jets from events
        calibrated_jets = events["Jet"]

        # Compute derived quantity
        derived = self.compute_derived_quantity(original_jets, calibrated_jets, variation)

        return {"DerivedQuantity": derived}


# --- helpers -------------------------------------------------------------------------------

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}


def with_my_object(events):
    """The seed's example calibrates a collection 'MyObject': here a copy of the jets."""
    lib = dak if isinstance(events, dak.Array) else ak
    return lib.with_field(events, events.Jet, "MyObject")


def user_params(params):
    return OmegaConf.merge(params, {"my_calibrator_config": {"scale": 1.05}})


def run_loop(calibrators, events, params, metadata, calibrators_with_variations, get):
    manager = CalibratorsManager(calibrators, events, params, metadata)
    return {
        variation: get(calibrated)
        for variation, calibrated in manager.calibration_loop(
            events, variations_for_calibrators=calibrators_with_variations
        )
    }


# --- the examples run on real NanoAOD, eager and lazy, with equal results --------------------


def test_custom_calibrator_eager_equals_lazy(tt_events, tt_lazy, params):
    params = user_params(params)

    def get(ev):
        return ev.MyObject.pt

    eager = run_loop([MyCustomCalibrator], with_my_object(tt_events), params, MC,
                     ["my_custom_calibrator"], get)
    lazy = run_loop([MyCustomCalibrator], with_my_object(tt_lazy), params, MC,
                    ["my_custom_calibrator"], get)
    assert list(eager) == ["nominal", "myUncertaintyUp", "myUncertaintyDown"]
    assert list(lazy) == list(eager)
    assert all(isinstance(v, dak.Array) for v in lazy.values())
    (computed,) = dask.compute(lazy)
    for variation in eager:
        assert ak.all(computed[variation] == eager[variation])
    jet_pt = tt_events.Jet.pt
    assert ak.all(eager["nominal"] == jet_pt * 1.05)
    assert ak.all(eager["myUncertaintyUp"] == jet_pt * 1.05 * 1.02)
    assert ak.all(eager["myUncertaintyDown"] == jet_pt * 1.05 * 0.98)


def test_advanced_calibrator_reads_originals_and_dependencies(tt_events, tt_lazy, params):
    from pipeline.calibration import JetsCalibrator

    def get(ev):
        return {"derived": ev.DerivedQuantity, "jet_pt": ev.Jet.pt}

    sequence = [JetsCalibrator, AdvancedCalibrator]
    eager = run_loop(sequence, tt_events, params, MC, ["jet_calibration"], get)
    lazy = run_loop(sequence, tt_lazy, params, MC, ["jet_calibration"], get)
    (computed,) = dask.compute(lazy)
    assert list(computed) == list(eager)
    assert len(eager) == 1 + 2 * (11 + 1 + 2)  # 11 regrouped JES + JER (AK4), Total + JER (AK8)
    for variation, values in eager.items():
        # the derived quantity is calibrated / original pt: originals were handed over intact
        expected = values["jet_pt"] / tt_events.Jet.pt
        assert ak.all(values["derived"] == expected), variation
        assert ak.all(computed[variation]["derived"] == values["derived"]), variation


def test_dependency_check_fires_when_order_is_wrong(tt_events, params):
    from pipeline.calibration import JetsCalibrator

    manager = CalibratorsManager([AdvancedCalibrator, JetsCalibrator], tt_events, params, MC)
    # the calibrator's own error, named: which calibrator, where, and its message
    with pytest.raises(CalibrationError, match=rf"calibrator '{AdvancedCalibrator.name}' "
                       r"failed in calibrate\(\) of variation 'nominal': ValueError: .*"
                       "requires jet_calibration") as caught:
        next(manager.calibration_loop(tt_events))
    assert isinstance(caught.value.__cause__, ValueError)


# --- manager behaviours ------------------------------------------------------------------------


class Recorder(Calibrator):
    """Scales the *current* jet pt and records what it was given."""

    name = "test_recorder"
    has_variations = True
    calibrated_collections = ["Jet.pt"]
    seen: list = []

    def initialize(self, events):
        self._variations = ["recUp", "recDown"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        Recorder.seen.append((variation, list(already_applied_calibrators), sorted(orig_colls)))
        factor = {"recUp": 1.1, "recDown": 0.9}.get(variation, 1.0)
        return {"Jet.pt": events.Jet.pt * 2 * factor}


class Follower(Calibrator):
    name = "test_follower"
    calibrated_collections = ["Jet.mass"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        Recorder.seen.append((variation, list(already_applied_calibrators), sorted(orig_colls)))
        return {"Jet.mass": orig_colls["Jet.mass"] + 0 * events.Jet.pt}


def test_sequence_reset_between_variations_and_applied_list(tt_events):
    Recorder.seen = []
    out = run_loop([Recorder, Follower], tt_events, None, MC, ["test_recorder"],
                   lambda ev: ev.Jet.pt)
    # each variation starts from the original events: pt doubled once, never twice
    assert ak.all(out["nominal"] == tt_events.Jet.pt * 2)
    assert ak.all(out["recUp"] == tt_events.Jet.pt * 2 * 1.1)
    assert ak.all(out["recDown"] == tt_events.Jet.pt * 2 * 0.9)
    assert Recorder.seen[0] == ("nominal", [], ["Jet", "Jet.mass", "Jet.pt"])
    assert Recorder.seen[1] == ("nominal", ["test_recorder"], ["Jet", "Jet.mass", "Jet.pt"])
    assert [s[0] for s in Recorder.seen] == ["nominal"] * 2 + ["recUp"] * 2 + ["recDown"] * 2


def test_variations_only_for_requested_calibrators(tt_events):
    manager = CalibratorsManager([Recorder, Follower], tt_events, None, MC)
    assert [v for v, _ in manager.calibration_loop(tt_events)] == ["nominal"]
    with pytest.raises(UnknownNameError, match="test_follower, test_recorder|test_recorder"):
        list(manager.calibration_loop(tt_events, variations_for_calibrators=["nope"]))


def test_mc_only_calibrators_skipped_on_data(data_events):
    metadata = {"isMC": False, "year": "2022_preEE", "era": "C", "sample": "DoubleMuon"}
    manager = CalibratorsManager([AdvancedCalibrator, Recorder], data_events, None, metadata)
    assert manager.calibrators == ["test_recorder"]
    assert manager.skipped == {"advanced_calibrator": "MC only"}
    variations = [v for v, _ in manager.calibration_loop(
        data_events, variations_for_calibrators=["advanced_calibrator"])]
    assert variations == ["nominal"]


def test_calibrator_disabled_per_period(tt_events, params):
    disabled = {"calibrators_enabled": {"test_recorder": {"2022_preEE": False}}}
    params = OmegaConf.merge(params, disabled)
    manager = CalibratorsManager([Recorder, Follower], tt_events, params, MC)
    assert manager.calibrators == ["test_follower"]
    other = CalibratorsManager([Recorder, Follower], tt_events, params, {**MC, "year": "2023"})
    assert other.calibrators == ["test_recorder", "test_follower"]


# --- type safety -------------------------------------------------------------------------------


class Undeclared(Calibrator):
    name = "test_undeclared"
    calibrated_collections = ["Jet.pt"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        return {"Jet.pt": events.Jet.pt, "Jet.eta": events.Jet.eta}


class WrongStructure(Calibrator):
    name = "test_wrong_structure"
    calibrated_collections = ["Jet.pt"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        return {"Jet.pt": ak.sum(events.Jet.pt, axis=1)}


class WrongCounts(Calibrator):
    name = "test_wrong_counts"
    calibrated_collections = ["Jet.pt"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        return {"Jet.pt": events.Jet.pt[:, :1]}


def test_undeclared_column_is_an_error(tt_events, tt_lazy):
    for events in (tt_events, tt_lazy):
        manager = CalibratorsManager([Undeclared], events, None, MC)
        with pytest.raises(CalibrationError, match=r"'test_undeclared' returned column 'Jet.eta'"):
            next(manager.calibration_loop(events))


@pytest.mark.parametrize("cls", [WrongStructure, WrongCounts])
def test_wrong_structure_is_an_error(tt_events, cls):
    manager = CalibratorsManager([cls], tt_events, None, MC)
    with pytest.raises(CalibrationError, match=rf"'{cls.name}' returned column 'Jet.pt'"):
        next(manager.calibration_loop(tt_events))


def test_wrong_structure_is_an_error_lazy(tt_lazy):
    manager = CalibratorsManager([WrongStructure], tt_lazy, None, MC)
    with pytest.raises(CalibrationError, match="different structure"):
        next(manager.calibration_loop(tt_lazy))


@pytest.mark.parametrize(
    ("variations", "message"),
    [
        (["jecUp"], "without its twin 'jecDown'"),
        (["jec_up", "jec_down"], "must be '{source}Up' or '{source}Down'"),
        (["nominal"], "reserved"),
    ],
)
def test_variation_names_are_checked(tt_events, variations, message):
    class BadNames(Calibrator):
        name = "test_bad_names"
        has_variations = True
        calibrated_collections = ["Jet.pt"]

        def initialize(self, events):
            self._variations = list(variations)

        def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
            return {}

    with pytest.raises(CalibrationError, match=re_escape(message)):
        CalibratorsManager([BadNames], tt_events, None, MC)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_calibrator_names_must_be_unique():
    with pytest.raises(NameClashError, match=r"already used by pipeline\.calibration\.jets\."
                       r"JetsCalibrator \(.*jets\.py:\d+\); choose another name for "
                       r"test_calibrator_api\..*Clash \(.*test_calibrator_api\.py:\d+\)"):
        class Clash(Calibrator):
            name = "jet_calibration"

            def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
                return {}


def test_declared_parameter_sections():
    assert MyCustomCalibrator.parameter_sections() == ["my_calibrator_config"]
    from pipeline.config.parameters import valid_sections

    assert "my_calibrator_config" in valid_sections([MyCustomCalibrator])
    assert "my_calibrator_config" not in valid_sections([])
    with pytest.raises(CalibrationError, match="params_section.*'my section'"):
        class BadSection(Calibrator):
            name = "bad_section_example"
            params_section = "my section"

            def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
                return {}


def test_eager_results_are_numbers_not_views(tt_events):
    out = run_loop([Recorder], tt_events, None, MC, [], lambda ev: ev.Jet.pt)
    assert np.allclose(ak.to_numpy(ak.flatten(out["nominal"])),
                       2 * ak.to_numpy(ak.flatten(tt_events.Jet.pt)))


def test_original_collections_fetch_on_first_use():
    """The calibrators' original collections are read when a calibrator asks, once: a
    declared collection no configuration uses (FatJet with AK4 jets alone) is never read."""

    class Counting:
        """Events that count the columns asked of them."""

        def __init__(self, events):
            self.events, self.asked = events, []
            self.fields = events.fields

        def __getitem__(self, key):
            self.asked.append(key)
            return self.events[key]

    events = Counting(ak.Array([{"Jet": [{"pt": 1.0}], "FatJet": [{"pt": 2.0}]}]))
    original = OriginalCollections(events, ["Jet.pt", "FatJet.pt", "Photon.pt"])
    assert list(original) == ["Jet", "Jet.pt", "FatJet", "FatJet.pt"]
    before = list(events.asked)  # has_column looks at the fields of each collection
    assert "FatJet" in original and "Photon.pt" not in original
    assert original["Jet.pt"].tolist() == [[1.0]]
    assert original["Jet.pt"] is original["Jet.pt"]
    assert events.asked[len(before):] == ["Jet"]
