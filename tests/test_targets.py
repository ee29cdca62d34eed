import dataclasses
import re

import pytest

from hwcomp.errors import TargetError
from hwcomp.targets import PRECISIONS, known_targets, load_target, targets_dir

REQUIRED = {"x86-avx2", "x86-avx512", "host", "arm-a53", "arm-a72", "arm-a76", "cuda-sm80",
            "cuda-sm90", "cortex-m4", "cortex-m7", "cortex-m55"}
NUMBER_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=\s*(-?[0-9][0-9_.e+\-]*|true|false)\s*(#.*)?$")


def test_every_required_profile_ships_and_loads():
    assert REQUIRED <= set(known_targets())
    for name in REQUIRED:
        target = load_target(name)
        assert target.name == name
        assert set(PRECISIONS) <= set(target.macs_per_cycle)
        assert target.peak_macs_per_s("fp32") > 0
        assert target.dram_bandwidth_bytes_s > 0
        assert target.tvm_target["kind"] in ("llvm", "cuda", "c")


def test_every_number_in_a_profile_cites_a_source():
    for path in targets_dir().glob("*.toml"):
        for line in path.read_text().splitlines():
            match = NUMBER_LINE.match(line)
            if match and match.group(1) != "detect_features":
                assert match.group(3), f"{path.name}: '{line.strip()}' has no source comment"


def test_capabilities_differ_where_the_hardware_does():
    a72, a76 = load_target("arm-a72"), load_target("arm-a76")
    assert not a72.int8_dot and not a72.fp16_arith
    assert a76.int8_dot and a76.fp16_arith
    assert "+dotprod" in a76.tvm_target["mattr"]
    assert load_target("x86-avx512").int8_dot and not load_target("x86-avx2").int8_dot


def test_host_profile_detects_this_cpu():
    from tvm.target import codegen

    host = load_target("host")
    assert host.tvm_target["mcpu"] == codegen.llvm_get_system_cpu()
    assert codegen.llvm_is_valid_cpu(host.tvm_target["mcpu"], "x86_64-linux-gnu")
    assert host.cores >= 1 and host.tvm_target["num-cores"] == host.cores
    assert host.vector_bits in (128, 256, 512)


def test_profiles_are_frozen():
    target = load_target("arm-a72")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.cores = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        target.tvm_target["mcpu"] = "x"  # type: ignore[index]


def test_sources_are_kept_for_show():
    target = load_target("arm-a72")
    assert "Raspberry Pi 4" in target.sources["compute.clock_hz"]


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError) as info:
        load_target("arm-a99")
    assert "arm-a99" in str(info.value)
    assert "arm-a72" in str(info.value) and "cortex-m7" in str(info.value)


def test_profile_missing_a_field_names_it(tmp_path):
    text = (targets_dir() / "arm-a72.toml").read_text().replace("clock_hz", "clock_mhz")
    path = tmp_path / "custom.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match="clock_hz"):
        load_target(str(path))


def test_every_profile_builds_a_tvm_target():
    for name in known_targets():
        assert load_target(name).tvm() is not None


def _profile_with(tmp_path, pattern: str, replacement: str) -> str:
    """arm-a72's profile with the first line matching ``pattern`` set to ``replacement``."""
    text = (targets_dir() / "arm-a72.toml").read_text()
    changed, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert count == 1, pattern
    path = tmp_path / "custom.toml"
    path.write_text(changed)
    return str(path)


@pytest.mark.parametrize("pattern,replacement,message", [
    (r"^clock_hz = .*$", "clock_hz = -1.5e9", r"clock_hz' = -1500000000.0: expected a number, "
                                              r"1e\+06 to 1e\+10 Hz"),
    (r"^clock_hz = .*$", "clock_hz = 0", "clock_hz.*1e.06 to 1e.10 Hz"),
    (r"^clock_hz = .*$", "clock_hz = 1.5", "clock_hz.*1e.06 to 1e.10 Hz"),  # meant as GHz
    (r"^clock_hz = .*$", "clock_hz = nan", "clock_hz' = nan"),
    (r"^clock_hz = .*$", "clock_hz = inf", "clock_hz' = inf"),
    (r"^clock_hz = .*$", 'clock_hz = "fast"', "clock_hz.*expected a number"),
    (r"^cores = .*$", 'cores = "two"', "cores.*expected an integer"),
    (r"^cores = .*$", "cores = -2", "cores.*0 to 4096 cores"),
    (r"^cores = .*$", "cores = 1.5", "cores.*expected an integer"),
    (r"^vector_bits = .*$", "vector_bits = 0", "vector_bits.*8 to 4096 bits"),
    (r"^int8_dot = .*$", 'int8_dot = "no"', "int8_dot.*true or false"),
    (r"^fp32 = .*$", "fp32 = 0", r"macs_per_cycle\] field 'fp32'.*MACs/cycle"),
    (r"^dram_bandwidth_bytes_s = .*$", "dram_bandwidth_bytes_s = -1", "dram_bandwidth.*bytes/s"),
    (r"^l2_bytes = .*$", "l2_bytes = -1", "l2_bytes.*0 to .* bytes"),
    (r"^int8 = 16.*$", "int8 = 0", r"channel_multiple\] field 'int8'.*1 to 1024 channels"),
    (r"^l2_bytes = .*$", "l2_byte = 1048576", r"\[memory\] field 'l2_byte' is not a profile "
                                              r"field .*hwcomp targets schema"),  # a typo
    (r"^family = .*$", 'family = "riscv"', "family.*one of x86, arm-a, cuda, mcu"),
    (r"^emulator_args = .*$", "emulator_args = 3", "emulator_args.*a list of strings"),
    (r"^\[memory\]$", "[memry]", "'memry' is not a profile field"),
])
def test_profile_fields_out_of_range_or_of_the_wrong_type_name_the_field(
        tmp_path, pattern, replacement, message):
    with pytest.raises(TargetError, match=message):
        load_target(_profile_with(tmp_path, pattern, replacement))


def test_a_tvm_target_tvm_does_not_know_is_a_profile_error(tmp_path):
    path = _profile_with(tmp_path, r'^kind = "llvm"$', 'kind = "quantum"')
    with pytest.raises(TargetError, match=r"\[tvm_target\].*quantum.*is not a TVM target"):
        load_target(path).tvm()


def test_the_schema_lists_every_field_with_its_unit():
    from tests.conftest import run_cli

    proc = run_cli("targets", "schema")
    assert proc.returncode == 0, proc.stderr
    assert "compute.clock_hz" in proc.stdout and "1e+06 to 1e+10" in proc.stdout
    assert "memory.l2_bytes" in proc.stdout and "bytes" in proc.stdout


def test_a_profile_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes((targets_dir() / "arm-a72.toml").read_bytes() + b"# caf\xe9\n")
    with pytest.raises(TargetError, match="not UTF-8"):
        load_target(str(path))


def test_a_valid_edit_still_loads(tmp_path):
    """Negative case: in-range values load (cores 0 means this machine's cores)."""
    target = load_target(_profile_with(tmp_path, r"^cores = .*$", "cores = 0"))
    assert target.cores >= 1
