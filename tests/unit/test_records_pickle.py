"""Records that cross Ray's process boundary by the thousand pickle as (class, field values)."""

from __future__ import annotations

import pickle

import pytest

from actors.commands import JobSpec
from actors.shard_types import AppendAck, SubmitItem, SubmitResult, Update
from actors.webhooks.dispatcher import Outgoing
from storage.errors import Conflict
from storage.records import Attempt, Chunk, Job

JOB = Job("acme", "j1", 0, 1.0, 2.0, output_seq=3, output_size=10)


@pytest.mark.parametrize(
    "record",
    [
        JOB,
        Chunk("acme", "j1", 1, 0, b"out"),
        AppendAck(1, 0, 3),
        Update(JOB, (Chunk("acme", "j1", 1, 0, b"out"),)),
        SubmitItem("acme", "j1", JobSpec(title="t"), "key"),
        SubmitResult(JOB, True),
        Attempt(1.0, 2.5, 204),
        Outgoing("msg_1", "https://hooks.example/x", b"{}", ("whsec_a",), 10.0),
    ],
)
def test_a_record_comes_back_equal_and_is_reduced_to_its_field_values(record):
    reduced = record.__reduce__()
    assert reduced[0] is type(record) and type(reduced[1]) is tuple
    assert pickle.loads(pickle.dumps(record)) == record


def test_an_error_result_keeps_its_class_and_message():
    back = pickle.loads(pickle.dumps(SubmitResult(error=Conflict("taken"))))
    assert type(back.error) is Conflict and back.error.message == "taken"
