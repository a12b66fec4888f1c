"""ROS 2 bags replayed through the pipeline, written with rosbags in fixtures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main

rosbags = pytest.importorskip("rosbags")


def write_bag(path, storage, frames):
    """A bag with /navcam/image (Image mono8 and mono16) and /navcam/compressed (JPEG)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    Img = store.types["sensor_msgs/msg/Image"]
    Compressed = store.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        raw = writer.add_connection("/navcam/image", Img.__msgtype__, typestore=store)
        packed = writer.add_connection(
            "/navcam/compressed", Compressed.__msgtype__, typestore=store
        )
        for i, image in enumerate(frames):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            header = Header(
                stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="navcam_left"
            )
            if i % 2:  # mono16 spans 16 bits (ROS: no bit depth field), big-endian
                wide = (image.astype(np.uint16) * 257).astype(">u2")
                msg = Img(header=header, height=image.shape[0], width=image.shape[1],
                          encoding="mono16", is_bigendian=1, step=2 * image.shape[1],
                          data=np.frombuffer(wide.tobytes(), np.uint8))  # fmt: skip
            else:
                msg = Img(header=header, height=image.shape[0], width=image.shape[1],
                          encoding="mono8", is_bigendian=0, step=image.shape[1],
                          data=image.ravel().copy())  # fmt: skip
            writer.write(raw, stamp, store.serialize_cdr(msg, Img.__msgtype__))
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            jpeg = Compressed(header=header, format="png",
                              data=np.frombuffer(buffer.getvalue(), np.uint8))  # fmt: skip
            writer.write(packed, stamp, store.serialize_cdr(jpeg, Compressed.__msgtype__))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_bag_replays_through_the_pipeline_with_header_stamps(band_models, tmp_path, storage):
    from edge.io.bag import BagFrames

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 128)).astype(np.uint8) for _ in range(4)]
    bag = tmp_path / "drive"
    write_bag(bag, storage, frames)
    got = list(BagFrames(bag, "/navcam/image"))
    assert [f.error for f in got] == [None] * 4
    np.testing.assert_array_equal(got[0].image, frames[0])  # mono8 as it was
    np.testing.assert_array_equal(got[1].image, frames[1])  # mono16 scaled to 8 bits
    compressed = list(BagFrames(bag, "/navcam/compressed"))
    np.testing.assert_array_equal(compressed[2].image, frames[2])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--bag", str(bag), "--topic", "/navcam/image",
                                       "--model", str(band_models["int8"]), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * 4
    assert [x["capture"]["t_unix_s"] for x in lines] == [1_700_000_000.0, 1_700_000_000.1,
                                                         1_700_000_000.2, 1_700_000_000.3]  # fmt: skip
    assert lines[0]["capture"] == {"time_utc": "2023-11-14T22:13:20.000Z",
                                   "t_unix_s": 1_700_000_000.0, "source": "ros_header",
                                   "camera": "navcam_left"}  # fmt: skip
    assert lines[0]["frame"] == "navcam_image_000000_1700000000000000000"
    assert (
        json.loads((out / "summary.json").read_text())["config"]["bag"]["topic"] == "/navcam/image"
    )


def test_a_wrong_topic_lists_the_image_topics_and_the_options_are_checked(band_models, tmp_path):
    bag = tmp_path / "drive"
    write_bag(bag, "mcap", [np.zeros((8, 8), np.uint8)])
    result = CliRunner().invoke(main, ["run", "--bag", str(bag), "--topic", "/imu",
                                       "--model", str(band_models["int8"])])  # fmt: skip
    assert result.exit_code == 2
    assert "/navcam/compressed (CompressedImage), /navcam/image (Image)" in result.output
    result = CliRunner().invoke(main, ["run", "--model", str(band_models["int8"])])
    assert result.exit_code == 2 and "give --camera-dir" in result.output
    result = CliRunner().invoke(main, ["run", "--bag", str(bag), "--watch",
                                       "--model", str(band_models["int8"])])  # fmt: skip
    assert result.exit_code == 2 and "not a --bag" in result.output


def test_an_undecodable_message_is_a_bad_frame(tmp_path):
    from rosbags.typesys import Stores, get_typestore

    from edge.io.bag import decode_message
    from edge.io.decode import BadFrame

    store = get_typestore(Stores.LATEST)
    Img = store.types["sensor_msgs/msg/Image"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=0, nanosec=0), frame_id="")
    short = Img(header=header, height=10, width=10, encoding="mono8", is_bigendian=0, step=10,
                data=np.zeros(50, np.uint8))  # fmt: skip
    with pytest.raises(BadFrame, match="step 10 and 50 bytes"):
        decode_message(short)
    odd = Img(header=header, height=2, width=2, encoding="bayer_rggb8", is_bigendian=0, step=2,
              data=np.zeros(4, np.uint8))  # fmt: skip
    with pytest.raises(BadFrame, match="bayer_rggb8"):
        decode_message(odd)


def test_colour_messages_become_the_luminance_a_colour_file_gets():
    from PIL import Image
    from rosbags.typesys import Stores, get_typestore

    from edge.io.bag import decode_message

    store = get_typestore(Stores.LATEST)
    Img = store.types["sensor_msgs/msg/Image"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=0, nanosec=0), frame_id="")
    rgb = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    # half-way cases ((299 R + 587 G + 114 B) % 1000 == 500), which a float path rounds down
    rgb[0, :4] = [[54, 206, 188], [221, 89, 177], [170, 28, 81], [62, 222, 32]]
    as_rgb = Img(header=header, height=6, width=5, encoding="rgb8", is_bigendian=0, step=15,
                 data=rgb.ravel())  # fmt: skip
    as_bgr = Img(header=header, height=6, width=5, encoding="bgr8", is_bigendian=0, step=15,
                 data=rgb[..., ::-1].ravel())  # fmt: skip
    grey = decode_message(as_rgb)
    assert grey.dtype == np.uint8 and grey.shape == (6, 5)
    np.testing.assert_array_equal(decode_message(as_bgr), grey)
    fixed = (rgb.astype(np.uint32) @ np.array([299, 587, 114], np.uint32) + 500) // 1000
    np.testing.assert_array_equal(grey, fixed)  # a colour file's luminance, rounded half up
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), np.int16)
    assert np.abs(grey.astype(np.int16) - pillow).max() <= 1  # Pillow's own fixed point
