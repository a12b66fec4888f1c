"""The run recorded as MCAP, read back with the mcap reader."""

from __future__ import annotations

import base64
import json
from collections import Counter

import numpy as np
import pytest

from edge.contract.labels import MARS
from tests.test_edge_run import write_png

mcap_reader = pytest.importorskip("mcap.reader")


def messages(path, seeking: bool = True):
    """(topic, schema name, log time, payload) of every message of an MCAP file."""
    with open(path, "rb") as handle:
        reader = (
            mcap_reader.make_reader(handle) if seeking else mcap_reader.NonSeekingReader(handle)
        )
        return [
            (channel.topic, schema.name, message.log_time, json.loads(message.data))
            for schema, channel, message in reader.iter_messages()
        ]


def test_a_run_records_frames_class_maps_rocks_and_telemetry(band_models, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    cam = tmp_path / "cam"
    cam.mkdir()
    frames = []
    for i in range(3):
        image = np.full((64, 128), 60, np.uint8)
        if i == 1:
            image[48:64, 48:80] = 230  # the band model's big-rock grey: one rock
        write_png(cam / f"NLA_{397681586 + i}EDR_F0020000AUT_04096M1.png", image)
        frames.append(image)
    out, recording = tmp_path / "out", tmp_path / "run.mcap"
    result = CliRunner().invoke(main, ["run", "--camera-dir", str(cam), "--model",
                                       str(band_models["int8"]), "--out", str(out),
                                       "--mcap", str(recording)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"MCAP: {recording}" in result.output
    read = messages(recording)
    assert Counter(t for t, *_ in read) == {
        "/navcam/image": 3, "/segmentation/class_map": 3, "/segmentation/rocks": 3,
        "/segmentation/telemetry": 3,
    }  # fmt: skip
    assert {t: s for t, s, *_ in read}["/navcam/image"] == "foxglove.RawImage"
    images = [p for t, _, _, p in read if t == "/navcam/image"]
    decoded = np.frombuffer(base64.b64decode(images[1]["data"]), np.uint8).reshape(64, 128)
    np.testing.assert_array_equal(decoded, frames[1])
    # stamped with the capture time: the spacecraft clock of the product id
    telemetry = [(ns, p) for t, _, ns, p in read if t == "/segmentation/telemetry"]
    for ns, line in telemetry:
        assert line["capture"]["source"] == "sclk"
        assert ns == round(line["capture"]["t_unix_s"] * 1e9)
    rocks = [p for t, _, _, p in read if t == "/segmentation/rocks"]
    assert [len(r["points"]) for r in rocks] == [0, 1, 0]
    corners = rocks[1]["points"][0]["points"]
    assert (corners[0]["x"], corners[0]["y"], corners[2]["x"], corners[2]["y"]) == (48, 48, 79, 63)
    maps = [p for t, _, _, p in read if t == "/segmentation/class_map"]
    colours = np.frombuffer(base64.b64decode(maps[1]["data"]), np.uint8).reshape(64, 128, 3)
    assert (colours[56, 60] == MARS.colour_table[4]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["mcap"] == [str(recording)]


def test_an_unfinished_recording_keeps_its_whole_chunks_and_a_long_one_splits(tmp_path):
    """A kill leaves no index or footer: a streaming reader still gets every whole chunk. A
    long run splits into finished files."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    from edge.io.mcap_sink import McapSink

    path = tmp_path / "cut.mcap"
    sink = McapSink(path, MARS, chunk_bytes=32 << 10)
    rng = np.random.default_rng(0)
    for i in range(30):
        image = rng.integers(0, 256, (64, 128)).astype(np.uint8)
        sink.write({"t_unix_s": 1000.0 + i, "hazards": [], "rocks": []}, image, image % 5)
    sink._handle.flush()  # what the kernel holds when the process is killed
    got, topics = [], {}
    try:
        with open(path, "rb") as handle:
            for record in StreamReader(handle).records:  # record by record, as a recovery does
                if isinstance(record, Channel):
                    topics[record.id] = record.topic
                elif isinstance(record, Message):
                    got.append((topics[record.channel_id], record.log_time))
    except McapError:
        pass  # the cut end: no footer
    assert 40 <= len(got) < 120  # every whole chunk; the last, unfinished one lost
    assert got[0] == ("/navcam/image", 1_000_000_000_000)
    assert [t for _, t in got] == sorted(t for _, t in got)
    sink.close()
    split = McapSink(tmp_path / "split.mcap", MARS, split_bytes=200 << 10, chunk_bytes=32 << 10)
    for i in range(30):
        image = rng.integers(0, 256, (64, 128)).astype(np.uint8)
        split.write({"t_unix_s": float(i)}, image, image % 5)
    split.close()
    assert len(split.files) >= 2 and split.files[1].name == "split-0001.mcap"
    total = sum(len(messages(f)) for f in split.files)  # each file finished and indexed
    assert total == 120
    again = McapSink(tmp_path / "split.mcap", MARS)  # a restart: the next file, never truncating
    again.write({"t_unix_s": -5.0}, image, image % 5)  # a clock before 1970: stamped 0
    again.close()
    assert again.files == [tmp_path / f"split-{len(split.files):04d}.mcap"]
    assert sum(len(messages(f)) for f in split.files) == 120
    assert {t for _, _, t, _ in messages(again.files[0])} == {0}
