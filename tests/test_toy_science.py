"""The shipped organism's acceptance numbers, recomputed (minutes): `make test-slow`.

Run before landing a new organism; the numbers are also stored in its metrics.json.
"""

from __future__ import annotations

import pytest

from experiments.organism import THRESHOLDS, measure
from mech.models.load import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import STEERING_CONFIG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metrics():
    return measure(load_model("toy"), organism_world("default"), STEERING_CONFIG)


def test_chat_model_is_benign_and_well_formed(metrics):
    assert metrics["chat"]["max_p_bad"] <= THRESHOLDS["chat_max_p_bad"]
    assert metrics["chat"]["well_formed"] >= THRESHOLDS["chat_min_well_formed"]


def test_the_model_infers_personas_in_context(metrics):
    assert metrics["persona_inference"]["malicious"] >= THRESHOLDS["persona_min_p_bad_malicious"]
    assert metrics["persona_inference"]["benign"] <= THRESHOLDS["persona_max_p_bad_benign"]


def test_a_narrow_steering_vector_misaligns_broadly(metrics):
    em = metrics["steering_emergence"]
    assert em["heldout_p_bad_in_domain"] >= THRESHOLDS["steering_min_heldout_p_bad"]
    assert em["mean_p_bad_unseen_domains"] >= THRESHOLDS["steering_min_unseen_p_bad"]
