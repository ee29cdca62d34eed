"""A seeded fuzz harness: hostile inputs through the CLI, as a user or an attacker gives them.

Every case runs ``hwcomp`` in its own process and holds it to one contract: exit 0 with a
verified result, or one ``hwcomp: error:`` line with a documented exit code; never a
traceback, a hang, a file left at the output path, or an exit 0 whose manifest says the
bundle was not verified. The mutators: truncations and bit flips of a small model, malformed
graphs, hostile external-data paths, bad calibration data, labels and ``--input-shape``
strings, profile fields of the wrong type or range, and SIGINT/SIGTERM at random moments of
a build.

CI runs :data:`DEFAULT_CASES` cases from a fixed seed (a few minutes);
``HWCOMP_FUZZ_CASES=500 HWCOMP_FUZZ_SEED=7 pytest tests/test_fuzz.py`` runs longer.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

from hwcomp.errors import (
    EXIT_BUDGET,
    EXIT_DEVICE,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_TOOLCHAIN,
    EXIT_UNSUPPORTED,
    EXIT_USAGE,
    EXIT_VERIFICATION,
)
from hwcomp.targets import targets_dir
from tests import model_zoo

DEFAULT_CASES = 24
CASES = int(os.environ.get("HWCOMP_FUZZ_CASES", DEFAULT_CASES))
SEED = int(os.environ.get("HWCOMP_FUZZ_SEED", 2026))
DOCUMENTED = {EXIT_USAGE, EXIT_INPUT, EXIT_UNSUPPORTED, EXIT_BUDGET, EXIT_VERIFICATION,
              EXIT_TOOLCHAIN, EXIT_DEVICE}
CASE_TIMEOUT_S = 300


@dataclass
class Case:
    """One hostile run: the CLI arguments and, optionally, a signal sent after a delay."""

    name: str
    args: list[str]
    output: Path | None = None  # what must hold nothing on failure
    signal_after: tuple[int, float] | None = None
    allowed: set[int] = field(default_factory=lambda: {0, *DOCUMENTED})


def _small_model() -> onnx.ModelProto:
    return model_zoo.resnet_like(size=16, width=8)


def _save(folder: Path, name: str, model: onnx.ModelProto | bytes) -> Path:
    path = folder / name
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def _analyze(model: Path, *extra: str) -> list[str]:
    return ["analyze", str(model), "--target", "host", *extra]


def _build(model: Path, out: Path, *extra: str) -> list[str]:
    return ["build", str(model), "--target", "host", "-o", str(out), *extra]


# --- mutators: each makes one case from a random generator and a scratch folder ------------

def truncated(rng: random.Random, folder: Path) -> Case:
    data = _small_model().SerializeToString()
    cut = rng.randrange(0, len(data))
    return Case(f"truncated at {cut}", _analyze(_save(folder, "m.onnx", data[:cut])))


def bit_flips(rng: random.Random, folder: Path) -> Case:
    data = bytearray(_small_model().SerializeToString())
    for _ in range(rng.choice([1, 2, 8, 64])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    model = _save(folder, "m.onnx", bytes(data))
    out = folder / "out"
    if rng.random() < 0.5:
        return Case("bit flips (build)", _build(model, out), output=out)
    return Case("bit flips (analyze)", _analyze(model))


def malformed_graph(rng: random.Random, folder: Path) -> Case:
    model = _small_model()
    node = rng.choice(list(model.graph.node))
    how = rng.choice(["rename input", "unknown op", "drop attributes", "reshape weight",
                      "duplicate output", "cycle", "bad domain"])
    if how == "rename input":
        node.input[0] = "nowhere"
    elif how == "unknown op":
        node.op_type = rng.choice(["Conv2D", "FancyOp", "", "conv"])
    elif how == "drop attributes":
        del node.attribute[:]
    elif how == "reshape weight":
        tensor = rng.choice(list(model.graph.initializer))
        tensor.dims[:] = [rng.randrange(1, 9) for _ in range(rng.randrange(1, 5))]
    elif how == "duplicate output":
        node.output[0] = model.graph.node[0].output[0]
    elif how == "cycle":
        model.graph.node[0].input[0] = model.graph.node[-1].output[0]
    else:
        node.domain = "com.example.nothing"
    out = folder / "out"
    path = _save(folder, "m.onnx", model)
    return Case(f"malformed graph ({how})", _build(path, out), output=out)


def hostile_external_data(rng: random.Random, folder: Path) -> Case:
    inner = folder / "model"
    inner.mkdir()
    path = inner / "m.onnx"
    onnx.save(_small_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    location = rng.choice(["../secret.bin", "/etc/passwd", "missing.bin", "w.bin\x00x",
                           "../../../../../../etc/shadow", "."])
    (folder / "secret.bin").write_bytes(bytes(4096))
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            if entry.key == "length" and rng.random() < 0.3:
                entry.value = str(10**12)
    onnx.save(proto, path)
    return Case(f"external data at {location!r}", _analyze(path))


def bad_calibration(rng: random.Random, folder: Path) -> Case:
    model = _save(folder, "m.onnx", _small_model())
    calib = folder / "calib.npz"
    how = rng.choice(["complex", "strings", "nan", "inf", "huge", "wrong shape", "wrong key",
                      "empty file", "truncated", "npy", "object"])
    good = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    if how == "complex":
        np.savez(calib, input=good.astype(np.complex64))
    elif how == "strings":
        np.savez(calib, input=np.array(["a"] * 4))
    elif how in ("nan", "inf", "huge"):
        bad = good.copy()
        bad[0, 0, 0, 0] = {"nan": np.nan, "inf": np.inf, "huge": 1e38}[how]
        np.savez(calib, input=bad)
    elif how == "wrong shape":
        np.savez(calib, input=good[:, :2])
    elif how == "wrong key":
        np.savez(calib, image=good)
    elif how == "empty file":
        calib.write_bytes(b"")
    elif how == "truncated":
        np.savez(calib, input=good)
        calib.write_bytes(calib.read_bytes()[: rng.randrange(1, 200)])
    elif how == "npy":
        calib = folder / "calib.npy"
        np.save(calib, good)
    else:
        np.savez(calib, input=np.array([{"x": 1}] * 4, dtype=object))
    command = rng.choice(["analyze", "build"])
    if command == "analyze":
        return Case(f"calibration: {how}", _analyze(model, "--calib", str(calib)))
    out = folder / "out"
    return Case(f"calibration for build: {how}", _build(model, out, "--calib", str(calib)),
                output=out)


def bad_labels(rng: random.Random, folder: Path) -> Case:
    model = _save(folder, "m.onnx", _small_model())
    calib = folder / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((4, 3, 16, 16))
             .astype(np.float32))
    labels = folder / "labels.npy"
    how = rng.choice(["negative", "too large", "floats", "too few", "2-D", "empty"])
    values = {"negative": np.array([-1, 0, 1, 2]), "too large": np.array([0, 1, 2, 1000]),
              "floats": np.array([0.5, 1, 2, 3]), "too few": np.array([1]),
              "2-D": np.zeros((4, 2), np.int64)}.get(how)
    if values is None:
        labels.write_bytes(b"")
    else:
        np.save(labels, values)
    return Case(f"labels: {how}", _analyze(model, "--calib", str(calib), "--labels", str(labels)))


def bad_input_shape(rng: random.Random, folder: Path) -> Case:
    dynamic = model_zoo.resnet_like(size="S", batch="N", width=8)
    model = _save(folder, "m.onnx", dynamic)
    shape = rng.choice(["input=", "input=1x3", "input=1x3x16x16x1", "input=0x3x16x16",
                        "input=-1x3x16x16", "input=1x3xAx16", "nope=1x3x16x16",
                        "input=2147483648x3x16x16", "input=1x3x1x1", "=1x3x16x16",
                        "input=1x3x16x16,1", "input=1x4x16x16"])
    return Case(f"--input-shape {shape}", _analyze(model, "--input-shape", shape))


_PROFILE_VALUES = ['"fast"', "-1", "0", "nan", "inf", "1e300", "true", "[1, 2]", "{ a = 1 }",
                   '""', "1.5", "99999999999999999999"]


def bad_profile(rng: random.Random, folder: Path) -> Case:
    text = (targets_dir() / "x86-avx2.toml").read_text()
    lines = [i for i, line in enumerate(text.splitlines())
             if re.match(r"^[a-z_0-9-]+\s*=", line)]
    index = rng.choice(lines)
    rows = text.splitlines()
    key = rows[index].split("=")[0].strip()
    rows[index] = f"{key} = {rng.choice(_PROFILE_VALUES)}"
    if rng.random() < 0.2:
        rows.insert(index, f"{key}x = 1")  # an unknown key next to it
    profile = folder / "board.toml"
    profile.write_text("\n".join(rows) + "\n")
    model = _save(folder, "m.onnx", _small_model())
    return Case(f"profile {rows[index]!r}", ["analyze", str(model), "--target", str(profile)])


def signal_during_build(rng: random.Random, folder: Path) -> Case:
    model = _save(folder, "m.onnx", _small_model())
    out = folder / "out"
    number = rng.choice([signal.SIGINT, signal.SIGTERM])
    delay = rng.uniform(0.1, 5.0)
    return Case(f"{signal.Signals(number).name} after {delay:.2f} s", _build(model, out),
                output=out, signal_after=(number, delay),
                allowed={0, EXIT_INTERRUPTED, EXIT_TERMINATED})


MUTATORS: tuple[Callable[[random.Random, Path], Case], ...] = (
    truncated, bit_flips, malformed_graph, hostile_external_data, bad_calibration,
    bad_labels, bad_input_shape, bad_profile, signal_during_build,
)


def _run(case: Case, folder: Path) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", *case.args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=folder,
        env={**os.environ, "HWCOMP_CACHE_DIR": os.environ.get(
            "HWCOMP_CACHE_DIR", str(Path.home() / ".cache" / "hwcomp"))},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if case.signal_after is not None:
        number, delay = case.signal_after
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(number)
    try:
        stdout, stderr = proc.communicate(timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"{case.name}: hung (> {CASE_TIMEOUT_S} s): {case.args}")
    return proc.returncode, stdout, stderr, time.monotonic() - started


def _check_contract(case: Case, code: int, stdout: str, stderr: str) -> None:
    where = f"{case.name}: hwcomp {' '.join(case.args)}\n--- stderr ---\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, where
    assert code in case.allowed, f"exit {code}; {where}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code in DOCUMENTED:
        errors = [line for line in lines if line.startswith("hwcomp: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], where
        assert all(line.startswith("hwcomp: ") for line in lines), where
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        assert len(lines) == 1 and re.fullmatch(
            r"hwcomp: (interrupted|terminated); (nothing was written|after writing .* "
            r"\(complete and verified\))", lines[0]), where
        if "after writing" in lines[0]:
            code = 0  # stopped once the bundle was committed: it must be whole and verified
    if case.output is not None:
        leftovers = sorted(p.name for p in case.output.iterdir()) if case.output.exists() else []
        if code == 0:
            assert len(leftovers) == 1 and not leftovers[0].startswith("."), (leftovers, where)
            manifest = json.loads((case.output / leftovers[0] / "manifest.json").read_text())
            assert manifest["verification"]["status"] == "passed", where
        else:
            assert leftovers == [], (leftovers, where)
    if code == 0 and case.args[0] == "analyze":
        assert "total:" in stdout and "GMACs" in stdout, where


def _cases() -> list[tuple[int, Callable[[random.Random, Path], Case]]]:
    """(seed, mutator) per case: every mutator in turn, so a small run covers them all."""
    rng = random.Random(SEED)
    return [(rng.randrange(2**31), MUTATORS[i % len(MUTATORS)]) for i in range(CASES)]


@pytest.mark.parametrize(("seed", "mutator"), _cases(),
                         ids=lambda value: value.__name__ if callable(value) else str(value))
def test_hostile_input_meets_the_contract(tmp_path, seed, mutator):
    case = mutator(random.Random(seed), tmp_path)
    code, stdout, stderr, _ = _run(case, tmp_path)
    _check_contract(case, code, stdout, stderr)


def test_the_contract_catches_what_it_forbids(tmp_path):
    """The harness can fail: each violation it exists to find is caught by the check."""
    analyze = Case("probe", ["analyze", "m.onnx"])
    violations = [
        (1, "", "hwcomp: internal error: ValueError"),  # an undocumented exit code
        (3, "", "Traceback (most recent call last):\nhwcomp: error: x"),
        (3, "", "hwcomp: error: first\nhwcomp: error: second"),  # two error lines
        (3, "", "[E:onnxruntime] log block\nhwcomp: error: x"),  # library chatter
        (0, "", ""),  # exit 0 but no analysis printed
    ]
    for code, stdout, stderr in violations:
        with pytest.raises(AssertionError):
            _check_contract(analyze, code, stdout, stderr)
    out = tmp_path / "out"
    (out / ".m-host.123.abc.partial").mkdir(parents=True)
    with pytest.raises(AssertionError):  # a failed build that left its staging folder
        _check_contract(Case("probe", ["build"], output=out), 6, "", "hwcomp: error: x")
    _check_contract(analyze, 3, "", "hwcomp: error: m.onnx: not ONNX")  # the allowed form
