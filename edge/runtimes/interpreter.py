"""The one module that imports a TFLite interpreter.

``ai-edge-litert`` (LiteRT, Google's successor of TFLite) is the default; ``tflite-runtime`` is
the fallback for boards without a LiteRT wheel. Neither pulls in TensorFlow. An ``.onnx`` model
(the ONNX Runtime peer of ``edge-seg bench``, :mod:`edge.bench.onnx_peer`) runs with ``onnxruntime``
behind the same few calls (:class:`OnnxInterpreter`); it is a benchmark peer, never the rover's
runtime.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from edge.runtimes import RUNTIME_PACKAGES, model_format

# the TFLite runtimes, in order of preference: {name: module}
RUNTIMES = {n: RUNTIME_PACKAGES[n].module for n in ("litert", "tflite-runtime")}
PEER_RUNTIME = "onnxruntime"  # runs .onnx files only; `pip install 'marsseg-edge[peers]'`
INTEGER_TYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}
# auto: xnnpack, or on a CPU with AMX whichever of xnnpack / xnnpack-no-amx a short calibration
# finds faster; builtin: TFLite's own kernels (no XNNPACK), for comparison.
KERNELS = ("auto", "xnnpack", "xnnpack-no-amx", "builtin")


class RuntimeUnavailable(RuntimeError):
    """No usable TFLite runtime is installed."""


def available_runtimes() -> list[str]:
    """The runtimes importable here, in order of preference."""
    return [
        name for name, module in RUNTIMES.items() if importlib.util.find_spec(module.split(".")[0])
    ]


def runtime_version(name: str) -> str:
    from importlib import metadata

    package = RUNTIME_PACKAGES.get(name)
    dist = package.distribution if package else name
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def make_interpreter(
    model_path: str | Path, num_threads: int = 1, runtime: str = "auto", xnnpack: bool = True
):
    """Open a .tflite with tensors allocated.

    Args:
        model_path: the model file (an ``.onnx`` opens an :class:`OnnxInterpreter`).
        num_threads: CPU threads for the kernels (LiteRT's default is 1; say it explicitly).
        runtime: ``auto`` (the first installed of the format's runtimes: LiteRT, else
            tflite-runtime, for a .tflite), ``litert`` or ``tflite-runtime``.
        xnnpack: use the XNNPACK delegate (the default delegate); False for the reference kernels'
            comparison.

    Returns:
        ``(interpreter, runtime_name)``.

    Raises:
        RuntimeUnavailable: when the asked runtime is not installed.
        ValueError: when the file is missing, of no known format, or not a valid model.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ValueError(f"no model at {model_path}")
    fmt = model_format(model_path)  # a file of no known format: one clear line
    if model_format(model_path).name == "onnx":
        if runtime not in ("auto", PEER_RUNTIME):
            raise ValueError(
                f"{model_path.name} is an ONNX model: it runs with {PEER_RUNTIME} only"
            )
        return OnnxInterpreter(model_path, num_threads), PEER_RUNTIME
    if runtime == "auto":
        names = available_runtimes()
        if not names:
            raise RuntimeUnavailable(f"no TFLite runtime installed: {fmt.install}")
        runtime = names[0]
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid: auto, {', '.join(RUNTIMES)}")
    try:
        module = importlib.import_module(RUNTIMES[runtime])
    except ImportError as err:
        raise RuntimeUnavailable(f"runtime {runtime} is not installed ({err})") from err
    kwargs = {"model_path": str(model_path), "num_threads": int(num_threads)}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = (
            module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        with _native_stderr_to_log():
            interpreter = module.Interpreter(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"cannot load {model_path.name} as a TFLite model: {str(err).splitlines()[0]}"
        ) from err
    return interpreter, runtime


class OnnxInterpreter:
    """An ONNX Runtime session behind the calls the pipeline makes of a TFLite interpreter
    (details, ``set_tensor``, ``invoke``, ``get_tensor``), for the benchmark's peer column.

    The session is ONNX Runtime's CPU provider as it ships (MLAS kernels, every graph
    optimization, ``num_threads`` intra-op threads, sequential). The output is bound once to a
    preallocated array and each input where it lies (I/O binding), so that ``invoke`` times the
    graph as LiteRT's does, not argument conversion and output allocation. Tensor indices:
    inputs first, then outputs.

    Raises:
        RuntimeUnavailable: without onnxruntime.
        ValueError: for a file ONNX Runtime cannot load.
    """

    def __init__(self, model_path: str | Path, num_threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeUnavailable(
                f"{Path(model_path).name} needs onnxruntime: pip install 'marsseg-edge[peers]'"
            ) from err
        import numpy as np

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own exception types
            raise ValueError(
                f"cannot load {Path(model_path).name} with onnxruntime: {str(err).splitlines()[0]}"
            ) from err
        dtypes = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}

        def details(args, first):
            odd = [f"{a.name}: {a.type}" for a in args if a.type not in dtypes]
            if odd:
                raise ValueError(f"{Path(model_path).name}: unsupported tensor type(s) {odd}")
            return [
                {
                    "index": first + k,
                    "name": a.name,
                    "shape": np.array(a.shape, np.int32),
                    "dtype": dtypes[a.type],
                    "quantization": (0.0, 0),
                }
                for k, a in enumerate(args)
            ]

        self._inputs = details(self.session.get_inputs(), 0)
        self._outputs = details(self.session.get_outputs(), len(self._inputs))
        self._binding = self.session.io_binding()
        self._results = {}
        for d in self._outputs:
            self._results[d["index"]] = np.zeros(d["shape"], d["dtype"])
            value = ort.OrtValue.ortvalue_from_numpy(self._results[d["index"]])
            self._binding.bind_ortvalue_output(d["name"], value)
        self._fed = {}

    def get_input_details(self) -> list[dict]:
        return self._inputs

    def get_output_details(self) -> list[dict]:
        return self._outputs

    def allocate_tensors(self) -> None:
        """Nothing to do (kept for the interpreter's interface)."""

    def set_tensor(self, index: int, value) -> None:
        """Copy ``value`` in (as LiteRT does: the caller may reuse its array).

        Raises:
            ValueError: for another index, dtype or shape than the input's, as LiteRT's does.
        """
        import numpy as np

        if not 0 <= index < len(self._inputs):
            raise ValueError(f"no input tensor {index} (inputs: 0..{len(self._inputs) - 1})")
        detail = self._inputs[index]
        value = np.asarray(value)
        shape = tuple(int(v) for v in detail["shape"])
        if value.dtype != detail["dtype"] or value.shape != shape:
            raise ValueError(
                f"input {detail['name']!r} takes {np.dtype(detail['dtype']).name} {shape}, "
                f"got {value.dtype.name} {value.shape}"
            )
        self._fed[index] = value = value.copy()  # the binding points at it: keep it alive
        self._binding.bind_cpu_input(detail["name"], value)

    def invoke(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def get_tensor(self, index: int):
        """A copy of an output (or of an input set before).

        Raises:
            ValueError: for an index that is neither.
        """
        if index in self._results:
            return self._results[index].copy()
        if index in self._fed:
            return self._fed[index].copy()
        raise ValueError(f"no tensor {index} set or computed")


@dataclass
class KernelChoice:
    """Which CPU kernels run a model, and why.

    Attributes:
        kernels: ``xnnpack``, ``xnnpack-no-amx`` or ``builtin``; ``onnxruntime-cpu`` for an
            ONNX peer.
        chosen_by: ``asked`` (a flag), ``calibration``, or why there was nothing to choose.
        calibration_ms: median invoke (ms) of each candidate, when calibrated.
    """

    kernels: str
    chosen_by: str
    calibration_ms: dict[str, float] | None = None

    def record(self) -> dict:
        """What reports and summary.json say of the execution path (after the interpreter is
        made: whether XNNPACK got AMX is read from the kernel then)."""
        from edge.runtimes.kernels import amx_permitted, cpu_features

        amx = amx_permitted()
        cpu = cpu_features().as_dict(amx)
        if self.kernels == "builtin":
            cpu["int8_isa"] = "builtin kernels (no XNNPACK)"
        elif self.kernels == "onnxruntime-cpu":
            cpu["int8_isa"] = f"ONNX Runtime MLAS (best on this CPU: {cpu['int8_isa']})"
        return {
            "kernels": self.kernels,
            "chosen_by": self.chosen_by,
            "calibration_ms": self.calibration_ms,
            "amx_in_use": amx and self.kernels != "builtin",
            "cpu": cpu,
        }


def choose_kernels(
    requested: str, model_path: str | Path, num_threads: int = 1, runtime: str = "auto"
) -> KernelChoice:
    """Resolve ``--kernels`` for this process, before its first interpreter.

    ``auto`` calibrates only where the CPU offers XNNPACK two int8 paths (AMX or VNNI): each is
    timed in a child process (the choice is per process and cannot be undone), the faster wins.
    ``xnnpack-no-amx`` makes the kernel refuse AMX to this process (:func:`edge.runtimes.kernels.refuse_amx`).

    Raises:
        ValueError: for an unknown name.
        OSError: if AMX cannot be refused (no seccomp).
    """
    from edge.runtimes.kernels import amx_permitted, amx_refused, cpu_features, refuse_amx

    if requested not in KERNELS:
        raise ValueError(f"unknown kernels {requested!r}; valid: {', '.join(KERNELS)}")
    if requested != "auto":
        choice = KernelChoice(requested, "asked")
    elif not cpu_features().has_amx:
        choice = KernelChoice("xnnpack", "one XNNPACK int8 path on this CPU (no AMX)")
    elif amx_permitted() or amx_refused():
        choice = KernelChoice("xnnpack", "AMX already granted or refused in this process")
    else:
        timings = calibrate(model_path, ["xnnpack", "xnnpack-no-amx"], num_threads, runtime)
        choice = KernelChoice(min(timings, key=timings.get), "calibration", timings)
    if choice.kernels == "xnnpack-no-amx":
        try:
            refuse_amx()
        except OSError as err:
            if requested != "auto":
                raise
            choice = KernelChoice("xnnpack", f"calibration chose no AMX, but {err}", timings)
    return choice


def calibrate(
    model_path: str | Path,
    candidates: list[str],
    num_threads: int = 1,
    runtime: str = "auto",
    runs: int = 30,
) -> dict[str, float]:
    """Median invoke time (ms) of each kernel choice, each in a fresh child process.

    Raises:
        ValueError: naming the candidate whose child failed.
    """
    import json
    import subprocess
    import sys

    timings = {}
    for kernels in candidates:
        spec = {"model": str(model_path), "kernels": kernels, "threads": num_threads,
                "runtime": runtime, "runs": runs}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "edge.runtimes.interpreter", "--time-invoke", json.dumps(spec)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise ValueError(f"calibrating {kernels} on {Path(model_path).name} failed: {tail}")
        timings[kernels] = round(float(done.stdout.split()[-1]), 4)
    return timings


def time_invoke(spec: dict) -> float:
    """Median ms of ``spec["runs"]`` invokes (zeros in) after a few warm-ups, with the asked
    kernels; the worker of :func:`calibrate`."""
    import time

    import numpy as np

    if spec["kernels"] == "xnnpack-no-amx":
        from edge.runtimes.kernels import refuse_amx

        refuse_amx()
    interpreter, _ = make_interpreter(
        spec["model"], spec["threads"], spec["runtime"], spec["kernels"] != "builtin"
    )
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    times = []
    for i in range(5 + spec["runs"]):
        start = time.perf_counter_ns()
        interpreter.invoke()
        if i >= 5:
            times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


@contextlib.contextmanager
def _native_stderr_to_log():
    """Route what the runtime's C++ code prints on stderr (its "INFO: Created TensorFlow Lite
    XNNPACK delegate" banner) into our log at debug level, so it neither garbles the status line
    nor ignores --log-level. A real error still reaches the log as a warning."""
    import logging
    import sys
    import tempfile

    log = logging.getLogger(__name__)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. embedded): nothing to route
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                level = logging.DEBUG if line.startswith("INFO") else logging.WARNING
                log.log(level, "runtime: %s", line)


@dataclass
class OpInfo:
    """One op of a model and the types of the tensors it reads and writes."""

    index: int
    name: str
    input_types: list[str]
    output_types: list[str]
    input_names: list[str]

    @property
    def is_integer(self) -> bool:
        # Weights of a few ops (e.g. bias) are int32; any float tensor means a float kernel.
        types = self.input_types + self.output_types
        return all(t in INTEGER_TYPES for t in types) and not self.name.upper().startswith(
            ("FLEX", "CUSTOM")
        )


def list_ops(interpreter) -> list[OpInfo]:
    """Every op of an interpreter's graph with its tensor types."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def describe(indices):
        valid = [i for i in indices if i >= 0 and i in tensors]
        return [tensors[i]["dtype"].__name__ for i in valid], [tensors[i]["name"] for i in valid]

    ops = []
    for op in interpreter._get_ops_details():  # the public API has no op listing
        in_types, in_names = describe(op["inputs"])
        out_types, _ = describe(op["outputs"])
        ops.append(OpInfo(op["index"], op["op_name"], in_types, out_types, in_names))
    return ops


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--time-invoke":
        print(time_invoke(json.loads(sys.argv[2])))
    else:
        sys.exit("usage: this module's entry point is for its own calibration workers")
