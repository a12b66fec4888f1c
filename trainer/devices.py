"""Which devices `trainer fit` trains on, under either Keras backend, and what it says of them.

``--device auto|cpu|gpu`` is settled before any data is read: ``gpu`` on a machine without one is
one line and exit 2 (a user who installed ``tensorflow-cpu`` by mistake learns it in a second,
not after an hour on the CPU); ``cpu`` hides the GPUs. The devices found (kind, name, count,
memory) and the precision policy are logged and written to the run's ``devices.json``.

The backend is Keras' (``KERAS_BACKEND``: ``tensorflow``, the default, or ``jax``); both see the
same flags. Under JAX the CPU is split into ``--replicas`` devices with XLA's
``--xla_force_host_platform_device_count``, which must be set before JAX starts its backend.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "gpu")


class DeviceError(ValueError):
    """The devices asked for are not there (exit 2, one line)."""


@dataclass
class Device:
    kind: str  # "cpu" or "gpu"
    name: str
    memory_gib: float | None = None  # None where the backend cannot say without allocating


@dataclass
class Devices:
    """What a run trains on: the backend, its devices of the kind used, and the precision."""

    backend: str
    kind: str
    devices: list[Device] = field(default_factory=list)
    precision: str = "float32"
    xla: bool = False
    versions: dict = field(default_factory=dict)

    def line(self) -> str:
        names = sorted({d.name for d in self.devices})
        memory = [d.memory_gib for d in self.devices if d.memory_gib]
        mem = f", {sum(memory):.1f} GiB" if memory else ""
        return (
            f"training on {len(self.devices)} {self.kind.upper()} device(s) ({', '.join(names)}"
            f"{mem}) with Keras {self.versions.get('keras', '?')} on {self.backend}; precision "
            f"{self.precision}, XLA {'on' if self.xla else 'off'}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def backend() -> str:
    import keras

    return keras.backend.backend()


def select(requested: str, replicas: int = 0) -> Devices:
    """Make the backend train on ``requested`` devices and describe them.

    Call before anything starts the backend's devices (this is what configures them).

    Raises:
        DeviceError: ``gpu`` without a GPU the backend can use, or an unknown name.
    """
    if requested not in DEVICES:
        raise DeviceError(f"--device {requested!r}: one of {', '.join(DEVICES)}")
    name = backend()
    if name == "jax":
        return _select_jax(requested, replicas)
    if name == "tensorflow":
        return _select_tensorflow(requested)
    raise DeviceError(f"KERAS_BACKEND={name}: trainer fit runs on tensorflow or jax")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the records that name the machine."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _no_gpu(backend_name: str, hint: str) -> DeviceError:
    return DeviceError(
        f"--device gpu: {backend_name} sees no GPU on this machine ({hint}); use --device cpu or "
        "auto, or install the GPU build (docs/training.md: Training on a GPU)"
    )


def _select_tensorflow(requested: str) -> Devices:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if requested == "gpu" and not gpus:
        built = tf.test.is_built_with_cuda()
        hint = (
            "this TensorFlow has CUDA, no GPU was found" if built else "a TensorFlow without CUDA"
        )
        raise _no_gpu("TensorFlow", hint)
    if requested == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")  # before the devices start
        gpus = []
    versions = {"keras": keras.__version__, "tensorflow": tf.__version__}
    if gpus:
        found = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            found.append(Device("gpu", details.get("device_name", gpu.name)))
        return Devices("tensorflow", "gpu", found, versions=versions)
    cpus = tf.config.list_physical_devices("CPU")
    return Devices(
        "tensorflow", "cpu", [Device("cpu", cpu_name()) for _ in cpus], versions=versions
    )


def configure_jax(requested: str, replicas: int) -> None:
    """What JAX reads when it starts its devices: the CPU split and the platforms. Before
    anything starts them (``jax.distributed`` does): afterwards they are silently ignored."""
    if replicas > 1:
        _split_jax_cpu(replicas)
    if requested == "cpu":
        import jax

        jax.config.update("jax_platforms", "cpu")


def _select_jax(requested: str, replicas: int) -> Devices:
    import jax
    import keras

    configure_jax(requested, replicas)
    versions = {"keras": keras.__version__, "jax": jax.__version__}
    if requested == "cpu" and jax.default_backend() != "cpu":
        raise DeviceError(f"--device cpu: JAX already started on {jax.default_backend()}")
    try:
        gpus = [] if requested == "cpu" else jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if requested == "gpu" and not gpus:
        raise _no_gpu("JAX", "no CUDA plugin (pip install 'jax[cuda12]') or no GPU")
    if gpus:
        found = [Device("gpu", d.device_kind, _jax_memory(d)) for d in gpus]
        return Devices("jax", "gpu", found, xla=True, versions=versions)
    cpus = jax.devices("cpu")
    if replicas > 1 and len(cpus) != replicas * jax.process_count():
        raise DeviceError(
            f"--replicas {replicas}: JAX already started with {len(cpus)} CPU device(s) in this "
            "process (set XLA_FLAGS=--xla_force_host_platform_device_count=N before it starts)"
        )
    return Devices(
        "jax", "cpu", [Device("cpu", cpu_name()) for _ in cpus], xla=True, versions=versions
    )


def _split_jax_cpu(replicas: int) -> None:
    """Ask XLA for ``replicas`` host devices (read when JAX starts its CPU backend)."""
    flag = f"--xla_force_host_platform_device_count={replicas}"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, flag])


def _jax_memory(device) -> float | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every platform reports memory
        return None
    limit = stats.get("bytes_limit")
    return round(limit / 2**30, 1) if limit else None


def set_precision(devices: Devices, mixed: bool) -> None:
    """``mixed_float16`` on GPUs, ``mixed_bfloat16`` on CPUs, or float32; recorded in ``devices``."""
    import keras

    if mixed:
        policy = "mixed_float16" if devices.kind == "gpu" else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        devices.precision = policy
