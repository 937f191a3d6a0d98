"""The wire format: msgpack frames, numpy as typed buffers, nothing that can run code."""

import pickle
import socket
import struct
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from pushcut.envcontract import ActionSpec, StepResult, TaskSpec
from pushcut.envpool.wire import (
    NDARRAY_EXT,
    ChannelClosed,
    ChannelTimeout,
    FramedSocket,
    ProtocolError,
    action_spec_from_wire,
    action_spec_to_wire,
    decode,
    encode,
    parse_address,
    step_from_wire,
    step_to_wire,
    tasks_from_wire,
    tasks_to_wire,
)


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int64", "bool", "<f2", ">i4"])
def test_arrays_round_trip_with_dtype_and_shape(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    out = decode(encode({"t": "result", "a": a, "empty": np.zeros((0, 3), dtype)}))
    assert out["a"].dtype == a.dtype and out["a"].shape == a.shape
    np.testing.assert_array_equal(out["a"], a)
    assert out["empty"].shape == (0, 3)
    out["a"][...] = 0  # decoded arrays are writable copies, not views into the frame


def test_non_contiguous_arrays_and_numpy_scalars_cross():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    out = decode(encode({"t": "result", "a": a, "s": np.float32(1.5), "b": np.bool_(True), "tup": (1, 2)}))
    np.testing.assert_array_equal(out["a"], a)
    assert out["s"] == 1.5 and out["b"] is True and out["tup"] == [1, 2]


def test_object_arrays_and_arbitrary_objects_are_refused():
    with pytest.raises(TypeError, match="object"):
        encode({"t": "result", "a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(TypeError, match="cannot cross the wire"):
        encode({"t": "result", "x": object()})


def test_a_forged_object_dtype_buffer_is_refused():
    meta = msgpack.packb(["|O", [1]])
    payload = msgpack.packb({"t": "result", "a": msgpack.ExtType(NDARRAY_EXT, meta + pickle.dumps(print))})
    with pytest.raises(ProtocolError, match="not allowed on the wire"):
        decode(payload)


def test_a_buffer_whose_size_does_not_match_its_shape_is_refused():
    meta = msgpack.packb(["<f4", [10]])
    payload = msgpack.packb({"t": "result", "a": msgpack.ExtType(NDARRAY_EXT, meta + b"\0" * 8)})
    with pytest.raises(ProtocolError, match="does not match"):
        decode(payload)


def test_unknown_message_types_and_garbage_are_refused():
    with pytest.raises(ProtocolError, match="unknown message type 'exec'"):
        decode(msgpack.packb({"t": "exec", "code": "import os"}))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(msgpack.packb([1, 2, 3]))
    with pytest.raises(ProtocolError, match="undecodable frame"):
        decode(b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError, match="unknown msgpack extension"):
        decode(msgpack.packb({"t": "result", "x": msgpack.ExtType(42, b"")}))
    with pytest.raises(ProtocolError):
        decode(pickle.dumps({"t": "result"}))


def test_contract_data_round_trips():
    task = TaskSpec("push", "push it", 5, (0, 1, 2), (3, 4), 40, ("touched",))
    assert tasks_from_wire(decode(encode({"t": "welcome", "x": tasks_to_wire([task])}))["x"]) == [task]
    spec = ActionSpec(2, (-1.0, -1.0), (1.0, 1.0))
    assert action_spec_from_wire(decode(encode({"t": "welcome", "x": action_spec_to_wire(spec)}))["x"]) == spec
    result = StepResult({"image": np.ones((4, 4, 3), np.uint8)}, 3, True, True, {"success": True, "stage": "lifted"},
                        [np.zeros((4, 4, 3), np.uint8)])
    back = step_from_wire(decode(encode({"t": "result", "x": step_to_wire(result)}))["x"])
    assert back.steps == 3 and back.success and back.done and back.info == result.info
    np.testing.assert_array_equal(back.observation["image"], result.observation["image"])
    assert len(back.frames) == 1


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield FramedSocket(a, peer="a"), FramedSocket(b, max_frame_mb=0.01, peer="b")
    a.close()
    b.close()


def test_frames_cross_a_socket(pair):
    a, b = pair
    a.send({"t": "ping", "id": 7})
    assert b.recv(1.0) == {"t": "ping", "id": 7}


def test_an_oversized_frame_is_refused_before_its_body_is_read(pair):
    a, b = pair
    a.sock.sendall(struct.pack(">I", 1 << 30))
    with pytest.raises(ProtocolError, match="over the limit of 10485 bytes"):
        b.recv(1.0)
    with pytest.raises(ProtocolError, match="exceeds the frame limit"):
        b.send({"t": "result", "x": np.zeros(100_000, np.uint8)})


def test_a_truncated_frame_and_a_stalled_peer_end_in_one_line(pair):
    a, b = pair
    a.sock.sendall(struct.pack(">I", 100) + b"\x81")
    with pytest.raises(ChannelTimeout, match="did not send a whole frame within 0 s"):
        b.recv(0.2)
    assert b.closed  # out of step with the stream: the connection is not reused
    c, d = socket.socketpair()
    c.sendall(struct.pack(">I", 100) + b"\x81")
    c.close()
    with pytest.raises(ProtocolError, match="truncated frame"):
        FramedSocket(d, peer="d").recv(1.0)
    d.close()


def test_a_closed_peer_is_channel_closed(pair):
    a, b = pair
    a.sock.close()
    with pytest.raises(ChannelClosed, match="closed the connection"):
        b.recv(1.0)


def test_addresses():
    assert parse_address("127.0.0.1:7171") == ("127.0.0.1", 7171)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost", "host:0", "host:http", ":80"):
        with pytest.raises(Exception, match="must look like host:port"):
            parse_address(bad)


def test_the_serving_side_imports_no_torch():
    code = ("import sys; import pushcut.envpool.server, pushcut.envpool, pushcut.envpool.wire, pushcut.cli, pushcut.commands; "
            "import pushcut.plugins.envs.tabletop; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_result_that_cannot_cross_the_wire_fails_only_its_env():
    from pushcut.envpool.host import encode_reply

    obs = {"image": np.zeros((2, 2, 3), np.uint8)}
    ok, odd = StepResult(obs, 1, False, False, {"a": 1}), StepResult(obs, 1, False, False, {"a": object()})
    items = decode(encode_reply(5, "step", [(0, ok), (1, odd)]))["items"]
    assert items[0][1]["steps"] == 1 and "cannot cross the wire" in items[1][1]["failure"]
