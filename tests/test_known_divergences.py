"""Every documented known divergence stays sized to what it measured and below what it qualifies, and every
check that names one finds a bound for each model it covers."""
import fnmatch

import pytest

from align.known_divergences import KNOWN
from align.report import FAMILIES, family_checks, load_measured

BOUNDS = [(d.id, b) for d in KNOWN.values() for b in d.bounds]


@pytest.mark.parametrize("did,b", BOUNDS, ids=[f"{d}-{b.models}-{b.key}" for d, b in BOUNDS])
def test_bound_is_sized_to_its_measurement(did, b):
    assert 0 < b.measured <= b.bound <= 3.5 * b.measured, \
        f"{did} {b.models}/{b.key}: bound {b.bound:.2e} vs measured {b.measured:.2e} (at most ~3x)"
    if b.qualifies is not None:       # well below what it qualifies: at least five times smaller
        assert b.bound <= 0.2 * b.qualifies, \
            f"{did} {b.models}/{b.key}: bound {b.bound:.2e} is not well below the quantity {b.qualifies:.2e}"
    if b.key.startswith(("step", "probe_step")) and b.measure == "abs":
        assert b.qualifies == 1.0, "a per-step gap is relative to the update itself (1): say so in qualifies"


@pytest.mark.parametrize("family,models", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_every_named_divergence_has_a_bound_for_each_model(family, models):
    for c in family_checks(family):
        if c.known is None:
            continue
        d = KNOWN[c.known]
        for m in c.models or models:
            assert any(fnmatch.fnmatchcase(m, b.models) for b in d.bounds), \
                f"{family} {c.stage}/{c.key} names {c.known}, which documents no bound for {m}"


def test_recorded_measurements_sit_inside_their_bounds():
    """What align/measured.json recorded for a key under a known divergence is inside that divergence's bound,
    and every key the run reported as KNOWN names a divergence whose bound covers it."""
    res = load_measured()["results"]
    checked = 0
    for model, stages in res.items():
        for stage, keys in stages.items():
            for key, r in keys.items():
                assert r["status"] != "FAIL", f"{model} {stage} {key} failed in the recorded run"
                if r["status"].startswith("KNOWN"):
                    did = r["status"][6:-1]
                    b = KNOWN[did].bound_for(model, key)
                    assert b is not None and r[{"abs": "max_abs", "rel": "max_rel", "rel_max": "rel_max"}[b.measure]] \
                        <= b.bound
                    checked += 1
    assert checked or not res
