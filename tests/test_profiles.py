"""Target profiles: every built-in loads; malformed profiles give errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.errors import ProfileError
from edgepack.profiles import Precision, Runtime, Step, builtin_names, load_all, load_profile

REQUIRED = {
    "android-arm64",
    "android-arm64-gpu",
    "rpi4-arm64",
    "rpi4-arm64-onnxruntime",
    "rpi-armv7",
    "intel-openvino-cpu",
    "jetson-orin-trt",
}


def test_required_profiles_exist_and_load():
    assert set(builtin_names()) >= REQUIRED
    for profile in load_all():
        assert profile.steps[-1] is Step.BUNDLE
        assert profile.device.cores >= 1
        assert profile.sha256 == load_profile(profile.name).sha256


def test_profiles_are_frozen():
    profile = load_profile("rpi4-arm64")
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        profile.name = "x"  # type: ignore[misc]


def test_variants_extend_their_base():
    base, gpu = load_profile("android-arm64"), load_profile("android-arm64-gpu")
    assert gpu.precision is Precision.FP16 and gpu.delegate == "gpu"
    assert gpu.emulation == base.emulation and gpu.device == base.device
    ort = load_profile("rpi4-arm64-onnxruntime")
    assert ort.runtime is Runtime.ONNXRUNTIME and ort.emulation.qemu_cpu == "cortex-a72"
    assert load_profile("rpi5-arm64").emulation.qemu_cpu == "cortex-a76"


def test_jetson_maps_jetpack_to_tensorrt_and_opset():
    jetson = load_profile("jetson-orin-trt")
    assert jetson.tensorrt is not None
    assert jetson.target_opset == jetson.tensorrt.tensorrt_max_opset[jetson.tensorrt.tensorrt_version]
    old = load_profile("jetson-orin-trt", overrides={"tensorrt": {"jetpack": "5.1"}})
    assert old.target_opset is not None and old.target_opset <= 17


def _write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_profile_extends_builtin(tmp_path):
    path = _write(tmp_path, 'extends = "rpi4-arm64"\nname = "my-pi"\n[accuracy]\nmax_abs_error = 0.01\n')
    profile = load_profile(path)
    assert profile.name == "my-pi" and profile.accuracy.max_abs_error == 0.01
    assert profile.accuracy.min_cosine == load_profile("rpi4-arm64").accuracy.min_cosine


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, 'extends = "rpi4-arm64"\nname = "x"\n[accuracy]\nmax_abs_eror = 0.01\n')
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "accuracy.max_abs_eror" in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('extends = "rpi4-arm64"\nname = "x"\nruntime = "onnxruntime"\n', "runtime 'onnxruntime' runs onnx"),
        ('extends = "rpi4-arm64"\nname = "x"\nsteps = ["bundle", "convert"]\n', "steps must be unique"),
        ('extends = "rpi4-arm64"\nname = "x"\n[step_options.bogus]\n', "unknown step 'bogus'"),
        ('extends = "nope-target"\n', "unknown target 'nope-target'"),
        ('name = "x"\n', "missing key"),
        ("name = \n", "not valid TOML"),
        ('extends = "rpi4-arm64"\nname = "x"\n[emulation]\nmode = "none"\n', "needs a reason"),
    ],
)
def test_malformed_profiles(tmp_path, text, needle):
    with pytest.raises(ProfileError) as info:
        load_profile(_write(tmp_path, text))
    assert needle in str(info.value)


def test_extends_cycle(tmp_path):
    _write(tmp_path, 'extends = "b.toml"\nname = "a"\n', "a.toml")
    _write(tmp_path, 'extends = "a.toml"\nname = "b"\n', "b.toml")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(tmp_path / "a.toml")


def test_unknown_step_option_is_refused(tmp_path):
    path = _write(tmp_path, 'extends = "rpi4-arm64"\nname = "x"\n[step_options.simplify]\ntol = "onnxsim"\n')
    with pytest.raises(ProfileError, match="unknown option.*tol.*simplify"):
        load_profile(path)


def test_step_options_are_typed_and_suggest_close_names(tmp_path):
    from edgepack.errors import ProfileError
    from edgepack.profiles import ConvertSettings, load_profile

    assert load_profile("rpi4-arm64").convert_settings == ConvertSettings()
    typo = tmp_path / "typo.toml"
    typo.write_text('extends = "rpi4-arm64"\nname = "typo"\n[step_options.convert]\nselect_tf_op = true\n')
    with pytest.raises(ProfileError, match="did you mean 'select_tf_ops'"):
        load_profile(typo)
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('extends = "rpi4-arm64"\nname = "wrong"\n[step_options.simplify]\ntool = "onnxsimm"\n')
    with pytest.raises(ProfileError, match="step_options.simplify.tool"):
        load_profile(wrong_type)


def test_profile_errors_name_the_file_and_the_close_key(tmp_path):
    from edgepack.errors import ProfileError
    from edgepack.profiles import load_profile

    bad_extends = tmp_path / "bad-extends.toml"
    bad_extends.write_text('extends = "rpi4-arm6"\nname = "x"\n')
    with pytest.raises(ProfileError, match=r"bad-extends\.toml: extends = 'rpi4-arm6': unknown target"):
        load_profile(bad_extends)
    typo = tmp_path / "typo.toml"
    typo.write_text('extends = "rpi4-arm64"\nname = "x"\n[emulation]\nqemu_cpux = "cortex-a72"\n')
    expected = r"typo\.toml: unknown key 'emulation.qemu_cpux' \(did you mean 'qemu_cpu'\?\)"
    with pytest.raises(ProfileError, match=expected):
        load_profile(typo)
