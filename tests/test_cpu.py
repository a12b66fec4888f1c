"""CPU features, the AMX switch, kernel choice and the limit conv (edge dependencies only)."""

from __future__ import annotations

import errno
import json
import platform
import subprocess
import sys

import numpy as np
import pytest

from edge.bench.roofline import conv_model, graph_macs, limit_macs
from edge.runtimes.interpreter import KERNELS, calibrate, choose_kernels, make_interpreter
from edge.runtimes.kernels import cpu_features

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_1 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni gfni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """model name\t: AMD EPYC
flags\t\t: avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni gfni avx_vnni
"""
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2690 v3\nflags\t\t: sse4_1 avx2 fma\n"
CORTEX_A76 = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp asimdhp\nCPU part\t: 0xd0b\n"
)
NEOVERSE_V2 = "Features\t: fp asimd asimddp i8mm sve sve2 bf16\nCPU part\t: 0xd4f\n"

x86_linux = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="x86-64 Linux only"
)


@pytest.mark.parametrize(
    ("text", "arch", "amx", "isa"),
    [
        (SAPPHIRE_RAPIDS, "x86_64", True, "amx-int8"),
        (SAPPHIRE_RAPIDS, "x86_64", False, "avx512-vnni+gfni"),
        (EPYC, "x86_64", True, "avx512-vnni+gfni"),
        (HASWELL, "x86_64", True, "avx2"),
        (CORTEX_A76, "aarch64", True, "neon-dotprod"),
        (NEOVERSE_V2, "aarch64", True, "neon-i8mm"),
    ],
)
def test_the_int8_path_follows_the_cpu_features(text, arch, amx, isa):
    features = cpu_features(text, arch)
    assert features.int8_isa(amx) == isa
    assert features.has_amx == (text is SAPPHIRE_RAPIDS)


def test_cpu_names_come_from_cpuinfo():
    assert cpu_features(SAPPHIRE_RAPIDS, "x86_64").model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_features(CORTEX_A76, "aarch64").model == "ARM part 0xd0b"
    assert "amx_int8" in cpu_features(SAPPHIRE_RAPIDS, "x86_64").flags
    # the board's name before the core's part number, whatever their order in the file
    pi = "CPU part\t: 0xd08\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B\n"
    assert cpu_features(pi, "aarch64").model == "BCM2835"


_REFUSAL = """
import errno, json, sys
import numpy as np
from edge.runtimes import kernels as cpu
from edge.segmenter import Segmenter
before = None if sys.argv[2] == "refuse-first" else cpu.request_amx()
choice_ok = cpu.refuse_amx() and cpu.refuse_amx()  # idempotent
after = cpu.request_amx()
seg = Segmenter(sys.argv[1], kernels="xnnpack-no-amx")
labels = seg.segment(np.full((64, 128), 90, np.uint8)).labels
print(json.dumps({"before": before, "after": after, "ok": choice_ok,
                  "execution": seg.execution, "shape": list(labels.shape)}))
"""


@x86_linux
def test_refusing_amx_makes_the_kernel_say_eperm_and_the_model_still_runs(band_models):
    def child(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _REFUSAL, str(band_models["int8"]), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    # a request before the filter is granted on an AMX CPU (and then held: AMX stays usable)
    asked_first = child("ask-first")
    assert asked_first["before"] != errno.EPERM  # granted (0) on AMX, unsupported elsewhere
    assert asked_first["after"] == errno.EPERM
    out = child("refuse-first")  # what --kernels xnnpack-no-amx does: the filter comes first
    assert out["after"] == errno.EPERM and out["ok"]
    ex = out["execution"]
    assert ex["kernels"] == "xnnpack-no-amx" and ex["chosen_by"] == "asked"
    assert ex["cpu"]["amx_refused"] and not ex["amx_in_use"]
    assert ex["cpu"]["int8_isa"] != "amx-int8"
    assert out["shape"] == [64, 128]


def test_calibration_times_each_candidate_in_its_own_process(band_models):
    timings = calibrate(band_models["int8"], ["xnnpack", "builtin"], runs=5)
    assert set(timings) == {"xnnpack", "builtin"} and all(t > 0 for t in timings.values())


def test_unknown_kernels_are_refused_with_the_valid_names(band_models):
    with pytest.raises(ValueError, match="valid: " + ", ".join(KERNELS)):
        choose_kernels("amx-please", band_models["int8"])


def test_auto_records_why_it_chose(band_models):
    choice = choose_kernels("auto", band_models["int8"])
    if cpu_features().has_amx:
        assert choice.chosen_by in ("calibration", "AMX already granted or refused in this process")
    else:
        assert choice.kernels == "xnnpack" and "no AMX" in choice.chosen_by
    record = choice.record()
    assert record["cpu"]["int8_isa"] and record["kernels"] == choice.kernels


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_limit_conv_is_a_real_conv(tmp_path, precision):
    path = tmp_path / f"limit_{precision}.tflite"
    path.write_bytes(conv_model(precision, side=6, channels=4, seed=1))
    plain, _ = make_interpreter(path, xnnpack=False)
    assert graph_macs(plain) == limit_macs(6, 4) == 6 * 6 * 4 * 4 * 9
    interpreter, _ = make_interpreter(path)
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(2)
    if precision == "float32":
        x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    else:
        x = rng.integers(-128, 128, (1, 6, 6, 4), dtype=np.int8)
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # the reference: the same weights and bias read back from the model, conv by hand ('same')
    tensors = {t["name"]: t for t in plain.get_tensor_details()}
    w = plain.get_tensor(tensors["weights"]["index"]).astype(np.float64)  # (out, 3, 3, in)
    b = plain.get_tensor(tensors["bias"]["index"]).astype(np.float64)
    if precision == "float32":
        xf, scale_in, scale_w = x.astype(np.float64), 1.0, np.ones(4)
    else:
        scale_in, zero_in = detail["quantization"]
        xf = x.astype(np.float64) - zero_in
        scale_w = tensors["weights"]["quantization_parameters"]["scales"]
    padded = np.pad(xf[0], ((1, 1), (1, 1), (0, 0)))
    acc = np.zeros((6, 6, 4))
    for dy in range(3):
        for dx in range(3):
            acc += np.einsum("hwi,oi->hwo", padded[dy : dy + 6, dx : dx + 6], w[:, dy, dx, :])
    real = (acc + b) * (scale_in * scale_w if precision == "int8" else 1.0)
    if precision == "float32":
        np.testing.assert_allclose(y[0], real, rtol=1e-4, atol=1e-4)
    else:
        out = interpreter.get_output_details()[0]["quantization"]
        expected = np.clip(np.round(real / out[0] + out[1]), -128, 127)
        assert np.abs(y[0].astype(int) - expected).max() <= 1  # requantization rounding
        assert len(np.unique(y)) > 10  # not saturated: a real signal went through


def test_every_model_format_has_a_metadata_reader_and_strange_files_are_named():
    from edge.contract.metadata import METADATA_READERS
    from edge.runtimes import FORMATS, model_format

    assert {f.suffix for f in FORMATS} == set(METADATA_READERS)
    assert model_format("m.TFLITE").name == "tflite" and model_format("p.onnx").own_kernels
    with pytest.raises(ValueError, match=r"m.pt: not a .tflite or .onnx model"):
        model_format("runs/m.pt")
