"""compute_saliency refuses settings that would silently give no maps, or be silently ignored."""

import pytest

from engine.core.saliency import SaliencyConfig, compute_saliency


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(method="foo"), "method must be one of perturbation, jacobian, both"),
        (dict(frames_per_batch=-1), "frames_per_batch must be an integer >= 1"),
        (dict(frames_per_batch=0), "frames_per_batch must be an integer >= 1"),
        (dict(frames_per_batch=2.5), "frames_per_batch must be an integer >= 1"),
        (dict(method="jacobian", precision="fast"), "precision=fast applies to the 2017 method's passes only"),
        (dict(method=["rise", "sarfa"], compile=True), "compile=true applies .* method=rise,sarfa makes none"),
        (dict(method="rise", precision="exat"), "precision must be one of exact, fast, got 'exat'"),
        (dict(method="rise", compile="yes"), "compile must be true or false, got 'yes'"),
    ],
)
def test_settings_that_would_give_no_maps_are_refused(single_pixel_policy, single_pixel_frame, change, match):
    with pytest.raises(ValueError, match=match):
        compute_saliency(single_pixel_policy, single_pixel_frame, (), SaliencyConfig(**change))


def test_good_settings_give_both_maps(single_pixel_policy, single_pixel_frame):
    maps = compute_saliency(single_pixel_policy, single_pixel_frame, (), SaliencyConfig(method="both", density=8))
    assert set(maps) == {"actor", "critic", "actor_scores", "critic_scores", "jacobian_actor", "jacobian_critic"}
    assert float(maps["actor"].max()) > 0 and float(maps["jacobian_actor"].max()) > 0
