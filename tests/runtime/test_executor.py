"""The executor's pieces that need no worker process: death reports, the restart seam, the header's room."""

import pytest
import torch

from chipfuse.runtime.executor import (
    ONE_PER_PROCESS,
    DeviceError,
    Executor,
    WorkerDeath,
)
from chipfuse.runtime.stage import Segment
from chipfuse.runtime.transport import (
    FORWARD,
    HEADER_LEN,
    HIDDEN,
    Collective,
    Direction,
    Header,
)


def test_a_death_by_signal_or_exit_code_names_the_die():
    killed = WorkerDeath(2, "die1", 1234, -9, "")
    assert killed.signal == 9 and killed.exit_code is None
    assert str(killed.error()) == "die die1 (worker rank 2, pid 1234) was killed by signal 9"
    failed = WorkerDeath(1, "die0", 99, 1, "RuntimeError: boom")
    assert failed.exit_code == 1 and failed.signal is None
    assert isinstance(failed.error(), DeviceError)
    assert str(failed.error()).endswith("exited with code 1: RuntimeError: boom")


def test_restart_is_a_clear_seam_not_a_silent_no_op():
    ex = Executor.__new__(Executor)
    with pytest.raises(NotImplementedError, match="close this Device and open a new one"):
        ex.restart(1)


def test_the_one_device_per_process_message_says_why_and_what_to_do():
    assert "close it first" in ONE_PER_PROCESS and "another process" in ONE_PER_PROCESS
    assert "default process group" in ONE_PER_PROCESS


def roundtrip(h: Header) -> Header:
    t = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h.encode_into(t)
    return Header.decode(t), t


def test_todays_forward_header_is_unchanged_on_the_wire():
    h, t = roundtrip(Header(FORWARD, 5, (Segment(1, 7, 1), Segment(2, 3, 1)), HIDDEN, 576, greedy=1))
    assert t[7] == 0  # the new route word is zero for every message sent today
    assert t[:7].tolist() == [FORWARD, 5, 2, HIDDEN, 576, 0, 1]
    assert h == Header(FORWARD, 5, (Segment(1, 7, 1), Segment(2, 3, 1)), HIDDEN, 576, greedy=1)
    assert h.direction == Direction.FORWARD and h.collective == Collective.NONE and h.group == 0


def test_direction_collective_and_group_round_trip():
    h, t = roundtrip(Header(FORWARD, 1, (Segment(0, 0, 4),), HIDDEN, 64, direction=Direction.BACKWARD,
                            collective=Collective.ALL_REDUCE, group=3))
    assert t[7] != 0
    assert (h.direction, h.collective, h.group) == (Direction.BACKWARD, Collective.ALL_REDUCE, 3)
