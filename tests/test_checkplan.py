"""What an emulated device check runs: the sample cap and which inference is counted (edgepack.checkplan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.checkplan import COUNT_FIRST_MACS, count_first, emulated_samples, run_args
from edgepack.macs import Cost
from edgepack.profiles import load_profile

RUN_PY = Path(__file__).resolve().parents[1] / "edgepack" / "templates" / "run.py"


def _cost(macs: float) -> Cost:
    return Cost(macs=int(macs), params=0, weight_bytes=0, activation_bytes=0)


def _with(profile, **emulation):
    return profile.model_copy(update={"emulation": profile.emulation.model_copy(update=emulation)})


@pytest.mark.parametrize(
    ("macs", "expected"),
    [(14.2e9, True), (2.3e9, True), (COUNT_FIRST_MACS, True), (COUNT_FIRST_MACS - 1, False), (4e6, False)],
)
def test_big_models_count_their_first_samples_inference(macs, expected):
    assert count_first(load_profile("rpi4-arm64"), _cost(macs)) is expected


def test_an_uncountable_model_and_the_profile_setting_decide_otherwise():
    profile = load_profile("rpi4-arm64")
    assert count_first(profile, None) is False  # no MACs known: the warm count, which is always right
    assert count_first(_with(profile, count_first=False), _cost(14e9)) is False
    assert count_first(_with(profile, count_first=True), _cost(4e6)) is True


def test_run_args_count_the_first_sample_under_emulation_only(tmp_path):
    (tmp_path / "run.py").write_text(RUN_PY.read_text())
    profile = load_profile("rpi4-arm64")
    big, small = _cost(2.3e9), _cost(4e6)
    assert run_args(profile, "qemu-user", tmp_path, big)[:7] == [
        "--warmup",
        "0",
        "--runs",
        "0",
        "--count",
        "1",
        "--count-first",
    ]
    assert "--count-first" not in run_args(profile, "qemu-user", tmp_path, small)
    assert "--count-first" not in run_args(profile, "ssh", tmp_path, big)  # a real device times warm runs
    (tmp_path / "run.py").write_text("# a bundle's run.py from before --count-first: --count only\n")
    assert run_args(profile, "qemu-user", tmp_path, big)[:6] == ["--warmup", "0", "--runs", "0", "--count", "1"]


def test_the_sample_cap_keeps_one_sample_of_a_detector_and_every_sample_of_a_small_model():
    profile = load_profile("rpi4-arm64")
    assert emulated_samples(profile, _cost(14.2e9), 64) == 1
    assert emulated_samples(profile, _cost(4e6), 64) == 64
    assert emulated_samples(profile, None, 64) == 64
    assert emulated_samples(_with(profile, samples=3), _cost(4e6), 64) == 3


def test_a_profile_file_sets_count_first(tmp_path):
    from edgepack.errors import ProfileError

    text = (Path(__file__).resolve().parents[1] / "targets" / "rpi4-arm64.toml").read_text()
    good = tmp_path / "good.toml"
    good.write_text(text.replace('debian_arch = "arm64"', 'debian_arch = "arm64"\ncount_first = false'))
    assert load_profile(str(good)).emulation.count_first is False
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('debian_arch = "arm64"', 'debian_arch = "arm64"\ncount_first = [1]'))
    with pytest.raises(ProfileError, match="count_first"):
        load_profile(str(bad))
