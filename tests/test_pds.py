"""PDS3 and PDS4 frames, read by the rover's own reader and checked against pdr."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.io.decode import BadFrame, decode_frame

pdr = pytest.importorskip("pdr")


def pds3_label(lines, samples, bits, kind, pointer, record_bytes=None, extra=""):
    return (
        "PDS_VERSION_ID = PDS3\r\n"
        + (
            f"RECORD_TYPE = FIXED_LENGTH\r\nRECORD_BYTES = {record_bytes}\r\n"
            if record_bytes
            else ""
        )
        + f"^IMAGE = {pointer}\r\n"
        + 'INSTRUMENT_ID = "NAV_LEFT_B"\r\nSTART_TIME = 2012-08-08T05:52:40.123Z\r\n'
        + "OBJECT = IMAGE\r\n"
        + f"  LINES = {lines}\r\n  LINE_SAMPLES = {samples}\r\n  SAMPLE_BITS = {bits}\r\n"
        + f"  SAMPLE_TYPE = {kind}\r\n  BANDS = 1\r\n{extra}"
        + "END_OBJECT = IMAGE\r\nEND\r\n"
    )


def write_attached(path, values, bits, kind, record_bytes=512, extra=""):
    """A label padded to whole records, then the image at the next record."""
    dtype = {8: "u1", 16: (">" if kind.startswith(("MSB", "UNSIGNED")) else "<") + "u2"}[bits]
    label = pds3_label(*values.shape, bits, kind, 3, record_bytes, extra).encode()
    assert len(label) <= 2 * record_bytes
    path.write_bytes(label.ljust(2 * record_bytes, b" ") + values.astype(dtype).tobytes())


def test_pds3_attached_8_bit_matches_pdr(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (48, 64)).astype(np.uint8)
    path = tmp_path / "NLB_450140267EDR.IMG"
    write_attached(path, values, 8, "UNSIGNED_INTEGER")
    np.testing.assert_array_equal(pdr.read(str(path))["IMAGE"], values)  # the file is what we say
    grey, _, meta = decode_frame(path)
    np.testing.assert_array_equal(grey, values)
    assert meta["source"] == "pds" and meta["camera"] == "nav_left_b"
    assert meta["time_utc"].isoformat() == "2012-08-08T05:52:40.123000+00:00"


@pytest.mark.parametrize("kind", ["MSB_UNSIGNED_INTEGER", "LSB_UNSIGNED_INTEGER"])
def test_pds3_12_in_16_bit_either_order_is_scaled_by_its_bit_mask(tmp_path, kind):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 4096, (32, 40)).astype(np.uint16)
    path = tmp_path / "frame.IMG"
    write_attached(path, values, 16, kind, extra="  SAMPLE_BIT_MASK = 2#0000111111111111#\r\n")
    np.testing.assert_array_equal(pdr.read(str(path))["IMAGE"], values)
    grey, _, _ = decode_frame(path)
    np.testing.assert_array_equal(grey, np.rint(values / 4095 * 255).astype(np.uint8))


def test_pds3_detached_label_with_a_byte_offset_and_line_prefixes(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    prefix = rng.integers(0, 256, (20, 4)).astype(np.uint8)  # e.g. per-line engineering bytes
    data = b"HEADER--" + np.concatenate([prefix, values], axis=1).tobytes()
    (tmp_path / "frame.IMG").write_bytes(data)
    label = pds3_label(20, 30, 8, "UNSIGNED_INTEGER", '("FRAME.IMG", 9 <BYTES>)',
                       extra="  LINE_PREFIX_BYTES = 4\r\n")  # fmt: skip
    (tmp_path / "frame.LBL").write_text(label)
    np.testing.assert_array_equal(pdr.read(str(tmp_path / "frame.LBL"))["IMAGE"], values)
    grey, _, meta = decode_frame(tmp_path / "frame.IMG")  # the name's case differs: found
    np.testing.assert_array_equal(grey, values)
    assert meta["camera"] == "nav_left_b"


def pds4_label(lines, samples, data_type, file_name, offset=0):
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Product_Observational xmlns="http://pds.nasa.gov/pds4/pds/v1">
  <Identification_Area><logical_identifier>urn:nasa:pds:test:frame</logical_identifier>
    <version_id>1.0</version_id><title>t</title><information_model_version>1.15.0.0</information_model_version>
    <product_class>Product_Observational</product_class></Identification_Area>
  <Observation_Area><Time_Coordinates><start_date_time>2021-02-19T20:55:17.000Z</start_date_time>
    <stop_date_time>2021-02-19T20:55:17.000Z</stop_date_time></Time_Coordinates></Observation_Area>
  <File_Area_Observational>
    <File><file_name>{file_name}</file_name></File>
    <Array_2D_Image>
      <offset unit="byte">{offset}</offset>
      <axes>2</axes><axis_index_order>Last Index Fastest</axis_index_order>
      <Element_Array><data_type>{data_type}</data_type></Element_Array>
      <Axis_Array><axis_name>Line</axis_name><elements>{lines}</elements><sequence_number>1</sequence_number></Axis_Array>
      <Axis_Array><axis_name>Sample</axis_name><elements>{samples}</elements><sequence_number>2</sequence_number></Axis_Array>
    </Array_2D_Image>
  </File_Area_Observational>
</Product_Observational>
"""


@pytest.mark.parametrize("data_type,dtype", [("UnsignedByte", "u1"), ("UnsignedMSB2", ">u2")])
def test_pds4_matches_pdr(tmp_path, data_type, dtype):
    rng = np.random.default_rng(3)
    high = 256 if dtype == "u1" else 65536
    values = rng.integers(0, high, (24, 36)).astype(dtype)
    (tmp_path / "frame.img").write_bytes(b"\0" * 16 + values.tobytes())
    (tmp_path / "frame.xml").write_text(pds4_label(24, 36, data_type, "frame.img", 16))
    read = pdr.read(str(tmp_path / "frame.xml"))
    arrays = [read[k] for k in read.keys() if isinstance(read[k], np.ndarray)]
    assert len(arrays) == 1
    np.testing.assert_array_equal(arrays[0], values)
    grey, _, meta = decode_frame(tmp_path / "frame.img")
    expected = values if dtype == "u1" else np.rint(values / 65535 * 255)
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))
    assert meta["time_utc"].isoformat() == "2021-02-19T20:55:17+00:00"


def test_a_bad_pds_file_is_a_bad_frame_that_says_why(tmp_path):
    values = np.zeros((10, 10), np.uint8)
    path = tmp_path / "short.IMG"
    write_attached(path, values, 8, "UNSIGNED_INTEGER")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(BadFrame, match="truncated"):
        decode_frame(path)
    (tmp_path / "nolabel.IMG").write_bytes(b"\1" * 100)
    with pytest.raises(BadFrame, match="no PDS label"):
        decode_frame(tmp_path / "nolabel.IMG")
    write_attached(
        tmp_path / "real.IMG", values, 8, "IEEE_REAL".replace("IEEE_REAL", "UNSIGNED_INTEGER")
    )
    odd = pds3_label(10, 10, 8, "UNSIGNED_INTEGER", 2, 512, extra="  LINE_PREFIX_BYTES = N/A\r\n")
    (tmp_path / "odd.IMG").write_bytes(odd.encode().ljust(512) + bytes(100))
    with pytest.raises(BadFrame, match="a label this reader cannot use"):
        decode_frame(tmp_path / "odd.IMG")
    (tmp_path / "float.IMG").write_bytes(
        pds3_label(10, 10, 32, "IEEE_REAL", 2, 512).encode().ljust(512) + b"\0" * 400
    )
    with pytest.raises(BadFrame, match="SAMPLE_BITS 32"):
        decode_frame(tmp_path / "float.IMG")


def test_a_camera_folder_of_pds_frames_runs_with_capture_times(band_models, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    cam = tmp_path / "cam"
    cam.mkdir()
    write_attached(cam / "a.IMG", np.full((64, 128), 90, np.uint8), 8, "UNSIGNED_INTEGER")
    (cam / "b.img").write_bytes(np.full((64, 128), 120, np.uint8).tobytes())
    (cam / "b.xml").write_text(pds4_label(64, 128, "UnsignedByte", "b.img"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--camera-dir", str(cam), "--model",
                                       str(band_models["int8"]), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "ok"]
    assert [x["capture"]["source"] for x in lines] == ["pds", "pds"]
    assert lines[0]["capture"]["camera"] == "nav_left_b"
    assert json.loads((out / "summary.json").read_text())["skipped_files"] == {}  # b.xml: a label
