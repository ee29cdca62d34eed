"""Latency of a bundle, measured by its own runner, optionally beside onnxruntime.

``--device local`` runs the bundle's prebuilt runner on this machine: natively when the
bundle's architecture is this machine's, under the target's emulator (``qemu-aarch64``)
otherwise — and then the figures are labelled *emulated*: they count emulation, not the
device's latency. ``--compare-ort`` times onnxruntime on the bundle's
``model.optimized.onnx`` with the same inputs in the same run and reports the ratio. The two
alternate: the measurements are split into rounds (bundle, then onnxruntime, then the bundle
again, ...) and the ratio is the median of the rounds' ratios. On a shared machine the load
moves within seconds (one bundle's median moved from 0.69 to 1.02 ms between consecutive
runs here), so a ratio of two medians taken one after the other measures that drift as much
as the code.

``rpc://host:port`` and ``tracker://host:port/key`` upload the library to a device running
``hwcomp device-server`` (TVM's RPC server) and time it there with TVM's time evaluator;
the bundle's architecture must be the device's.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from hwcomp import instructions, remote
from hwcomp.errors import ExecutionError, HwcompError, ModelLoadError
from hwcomp.lower import lowering_for
from hwcomp.lower.library.runner import emulated as emulated_command
from hwcomp.lower.types import flatten_outputs
from hwcomp.targets import Target, load_target
from hwcomp.threads import thread_env

# Rounds a comparison with onnxruntime alternates in (fewer when --repeat is smaller).
COMPARE_ROUNDS = 5
# Seconds of idle time before each timer's turn in a round (see alternate()).
SETTLE_S = 0.2

# n -> n latencies in ms (a runner or an onnxruntime session, with its own warm-up).
Timer = Callable[[int], list[float]]


class BenchError(HwcompError):
    """The bundle or the device cannot be benchmarked as asked."""


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-run latencies, in milliseconds."""

    runs: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float

    @classmethod
    def of(cls, samples: list[float]) -> LatencyStats:
        """Summarise ``samples`` (milliseconds)."""
        array = np.asarray(samples, dtype=np.float64)
        return cls(runs=len(array), min_ms=float(array.min()), mean_ms=float(array.mean()),
                   median_ms=float(np.median(array)), p90_ms=float(np.percentile(array, 90)),
                   p99_ms=float(np.percentile(array, 99)), std_ms=float(array.std()))


@dataclass(frozen=True)
class BenchResult:
    """One benchmark: where it ran, the bundle's latency and, if asked, onnxruntime's."""

    bundle: str
    target: str
    device: str
    emulated: bool
    threads: int
    hwcomp: LatencyStats
    onnxruntime: LatencyStats | None
    # Per round of a comparison: (hwcomp median, onnxruntime median), in milliseconds.
    rounds: tuple[tuple[float, float], ...] = ()

    @property
    def ratio(self) -> float | None:
        """Hwcomp over onnxruntime, below 1 when hwcomp is faster.

        The median of the rounds' ratios of medians (the rounds alternate the two).
        """
        if self.onnxruntime is None:
            return None
        return paired_ratio(self.rounds)

    def to_json(self) -> str:
        """JSON text of the result."""
        return json.dumps({**asdict(self), "ratio": self.ratio}, indent=2)


def load_bundle(bundle: Path, need_runner: bool = True) -> tuple[dict, Target]:
    """Read a bundle's manifest and target.

    Raises:
        BenchError: Not a bundle, or one without a runner.
    """
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise BenchError(f"{bundle}: not an hwcomp bundle (no manifest.json); build one with hwcomp build")
    manifest = json.loads(manifest_path.read_text())
    target = load_target(manifest["target"]["name"])
    if need_runner and not (bundle / "bin" / "hwcomp_runner").is_file():
        raise BenchError(f"{bundle}: the bundle has no runner (bin/hwcomp_runner); "
                         f"target family {target.family} bundles are run from Python for now")
    return manifest, target


def input_files(bundle: Path) -> list[Path]:
    """Return the bundle's verification input files (``verify/input_NN_<name>.npy``), in order."""
    return sorted((Path(bundle) / "verify").glob("input_*.npy"))


def verify_inputs(bundle: Path) -> dict[str, np.ndarray]:
    """Return the bundle's verification inputs as feeds: input name (manifest) -> array."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    return {spec["name"]: np.load(path)
            for spec, path in zip(manifest["inputs"], input_files(bundle), strict=True)}


def paired_ratio(rounds: Sequence[tuple[float, float]]) -> float:
    """Median over rounds of ``a / b``: each round's pair was measured back to back."""
    return float(np.median([a / b for a, b in rounds]))


def alternate(timers: dict[str, Timer], repeat: int,
              rounds: int = COMPARE_ROUNDS) -> dict[str, list[list[float]]]:
    """Time each of ``timers`` in turn, round after round: name -> each round's samples.

    A pause comes before each turn: onnxruntime's idle threads spin for a while after its
    runs and would take a core from the next timer (a 0.06 ms bundle measured 7.9 ms right
    after).
    """
    samples: dict[str, list[list[float]]] = {name: [] for name in timers}
    for size in split_rounds(repeat, rounds):
        for name, timer in timers.items():
            time.sleep(SETTLE_S)
            samples[name].append(timer(size))
    return samples


def round_medians(samples: list[list[float]]) -> list[float]:
    """Each round's median."""
    return [float(np.median(r)) for r in samples]


def split_rounds(repeat: int, rounds: int = COMPARE_ROUNDS) -> list[int]:
    """Split ``repeat`` measurements into at most ``rounds`` near-equal rounds."""
    count = max(1, min(rounds, repeat))
    return [repeat // count + (1 if i < repeat % count else 0) for i in range(count)]


def bench(bundle: Path, device: str = "local", warmup: int = 5, repeat: int = 50, number: int = 1,
          threads: int = 0, compare_ort: bool = False) -> BenchResult:
    """Time ``bundle`` on ``device``: ``local``, ``rpc://host:port`` or ``tracker://host:port/key``."""
    bundle = Path(bundle)
    if device != "local":
        address = remote.parse_device(device)
        if compare_ort:
            raise BenchError("--compare-ort times onnxruntime on this machine, not on the device; "
                             "run hwcomp bench on the device with --device local to compare")
        manifest, target = load_bundle(bundle, need_runner=False)
        return _bench_remote(bundle, target, address, warmup, repeat, number)
    manifest, target = load_bundle(bundle)
    emulated = bool(target.emulator)
    if not emulated and lowering_for(target).not_run_reason(target):
        raise BenchError(f"{bundle}: {lowering_for(target).not_run_reason(target)}")
    device_label = f"local ({'emulated: ' + target.emulator if emulated else 'native'})"
    if not compare_ort:
        samples = runner_samples(bundle, warmup, repeat, number, threads)
        return BenchResult(bundle=str(bundle), target=target.name, device=device_label,
                           emulated=emulated, threads=threads, hwcomp=LatencyStats.of(samples),
                           onnxruntime=None)
    timer = OnnxruntimeTimer(bundle / "model.optimized.onnx", verify_inputs(bundle), threads,
                             warmup)
    measured = alternate({
        "hwcomp": lambda n: runner_samples(bundle, warmup, n, number, threads),
        "onnxruntime": lambda n: timer.samples(n, number, warmup)}, repeat)
    ours, theirs = measured["hwcomp"], measured["onnxruntime"]
    return BenchResult(bundle=str(bundle), target=target.name, device=device_label,
                       emulated=emulated, threads=threads, hwcomp=LatencyStats.of(sum(ours, [])),
                       onnxruntime=LatencyStats.of(sum(theirs, [])),
                       rounds=tuple(zip(round_medians(ours), round_medians(theirs), strict=True)))


def count_instructions(bundle: Path, runs: int = 1, warmup: int = 2,
                       compare_ort: bool = False) -> instructions.CountResult:
    """Count the instructions ``bundle`` executes per inference under qemu (and onnxruntime's)."""
    bundle = Path(bundle)
    _, target = load_bundle(bundle)
    return instructions.count_bundle(bundle, target, input_files(bundle), runs=runs,
                                     warmup=warmup, compare_ort=compare_ort)


def runner_samples(bundle: Path, warmup: int, repeat: int, number: int,
                   threads: int) -> list[float]:
    """Run the bundle's runner once (``warmup`` untimed runs first); its latencies in ms.

    ARM bundles run under the target's emulator.
    """
    bundle = Path(bundle)
    _, target = load_bundle(bundle)
    command = [str(bundle / "bin" / "hwcomp_runner"), str(bundle / "lib" / "model.so"),
               "--warmup", str(warmup), "--repeat", str(repeat), "--number", str(number)]
    if target.emulator:
        command = emulated_command(command, target, "to run Arm bundles here")
    with tempfile.TemporaryDirectory(prefix="hwcomp-bench-") as scratch:
        times = Path(scratch) / "times.txt"
        proc = subprocess.run([*command, "--times", str(times), "--inputs",
                               *map(str, input_files(bundle))],
                              capture_output=True, text=True, env=thread_env(threads),
                              check=False)
        if proc.returncode != 0:
            raise ExecutionError(f"{bundle}: the runner failed: {proc.stderr.strip()[-400:]}")
        return [float(line) for line in times.read_text().split()]


class OnnxruntimeTimer:
    """An onnxruntime CPU session on ``model``, warmed up, that times runs on ``feeds``."""

    def __init__(self, model: Path, feeds: dict[str, np.ndarray], threads: int,
                 warmup: int = 5) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 4  # errors come back as exceptions
        try:
            self.session = ort.InferenceSession(str(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise ModelLoadError(f"{model}: onnxruntime cannot load it: {str(exc)[:200]}") from None
        self.feeds = feeds
        for _ in range(warmup):
            self.session.run(None, feeds)

    def samples(self, repeat: int, number: int = 1, warmup: int = 0) -> list[float]:
        """``repeat`` measurements, each the mean of ``number`` runs, in ms.

        ``warmup`` untimed runs first: after a pause onnxruntime's threads are parked and its
        first runs pay for waking them (a 0.08 ms model measured 0.3-0.6 ms).
        """
        for _ in range(warmup):
            self.session.run(None, self.feeds)
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                self.session.run(None, self.feeds)
            samples.append((time.perf_counter() - start) * 1e3 / number)
        return samples


def time_onnxruntime(model: Path, feeds: dict[str, np.ndarray], warmup: int, repeat: int,
                     number: int, threads: int) -> LatencyStats:
    """Onnxruntime's latency on ``model`` with ``feeds`` (CPU provider)."""
    return LatencyStats.of(OnnxruntimeTimer(model, feeds, threads, warmup).samples(repeat, number))


def _remote_vm(session: Any, bundle: Path, kind: str) -> tuple[Any, Any]:
    """Upload the bundle's library over ``session``; return its VM and the device (``kind``)."""
    from tvm import relax

    session.upload(str(bundle / "lib" / "model.so"), "hwcomp_model.so")
    library = session.load_module("hwcomp_model.so")
    device = session.cuda() if kind == "cuda" else session.cpu()
    return relax.VirtualMachine(library, device), device


def run_on_device(bundle: Path, address: remote.DeviceAddress, inputs: Sequence[np.ndarray],
                  kind: str = "cpu") -> list[np.ndarray]:
    """Run ``bundle``'s library once on the device at ``address``; return its outputs.

    Bounded like the benchmark: the connection, and the whole run, each by their timeout.

    Raises:
        DeviceError: The device cannot be reached or stops answering.
        ExecutionError: The run fails on the device.
    """
    import tvm

    session = remote.connect(address)

    def run() -> list[np.ndarray]:
        vm, device = _remote_vm(session, bundle, kind)
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x), device)
                              for x in inputs])
        return flatten_outputs(result)

    try:
        return remote.bounded(run, remote.SESSION_TIMEOUT_S, f"{address}: the verification run")
    except remote.DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - errors raised on the device come back as TVM errors
        raise ExecutionError(f"{address}: running the bundle failed: "
                             f"{str(exc).splitlines()[-1][:300]}") from None


def _bench_remote(bundle: Path, target: Target, address: remote.DeviceAddress, warmup: int,
                  repeat: int, number: int) -> BenchResult:
    import tvm

    session = remote.connect(address)

    def measure() -> Any:
        vm, device = _remote_vm(session, bundle, "cpu")
        inputs = [tvm.runtime.tensor(np.load(p), device) for p in input_files(bundle)]
        vm.set_input("main", *inputs)
        for _ in range(warmup):
            vm.invoke_stateful("main")
        timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=repeat)
        return timer("main").results

    try:
        # The session's own deadline (the server ends it) bounds this too; the client needs
        # its own against a device that stops answering mid-run.
        seconds = remote.bounded(measure, remote.SESSION_TIMEOUT_S,
                                 f"{address}: the benchmark on the device")
    except remote.DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - errors raised on the device come back as TVM errors
        raise ExecutionError(f"{address}: running the bundle failed: {str(exc).splitlines()[-1][:300]} "
                             f"(is the device's architecture the bundle's, {target.name}?)") from None
    return BenchResult(bundle=str(bundle), target=target.name, device=str(address), emulated=False,
                       threads=0, hwcomp=LatencyStats.of([1e3 * t for t in seconds]), onnxruntime=None)
