"""The commands' own rules (actors.commands, actors.limits): over a size limit is `TooLarge`,
a wrong shape is `Invalid` (and not `TooLarge`), checked at the exact boundaries."""

from __future__ import annotations

import pytest

from actors import limits
from actors.commands import (
    Completion,
    JobSpec,
    ProgressUpdate,
    check_events,
    check_grace_s,
    check_job_id,
    check_namespace,
    check_seq,
    check_ttl_s,
    parse_output_format,
    parse_status,
)
from actors.limits import check_chunk, check_size, check_text
from storage.errors import Invalid, TooLarge
from storage.records import JobStatus, OutputFormat

NAN = float("nan")
INF = float("inf")


def invalid_not_too_large(call, *args, **kwargs) -> Invalid:
    """Run `call`, which must raise `Invalid` itself: a wrong shape is 422, never 413."""
    with pytest.raises(Invalid) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is Invalid, f"{caught.value!r} should be Invalid, not TooLarge"
    return caught.value


# -- job ids and namespaces -----------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["j", "a" * 128, "A1.b_c:d-e", "0", "550e8400-e29b"])
def test_job_ids_up_to_128_safe_characters_are_accepted(job_id):
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize("length", [129, 2000])
def test_a_job_id_over_128_characters_is_too_large(length):
    with pytest.raises(TooLarge):
        check_job_id("a" * length)


@pytest.mark.parametrize(
    "job_id", ["", None, 7, "a/b", "with space", "../etc", ".hidden", "-x", "ü", "a\nb"]
)
def test_a_job_id_of_the_wrong_shape_is_invalid(job_id):
    invalid_not_too_large(check_job_id, job_id)


@pytest.mark.parametrize("check", [check_job_id, check_namespace], ids=["job-id", "namespace"])
def test_a_trailing_newline_is_not_part_of_an_id(check):
    invalid_not_too_large(check, "acme\n")


@pytest.mark.parametrize("name", ["a", "acme", "team-7", "0", "a" * 63])
def test_namespaces_up_to_63_lowercase_characters_are_accepted(name):
    assert check_namespace(name) == name


@pytest.mark.parametrize("length", [64, 2000])
def test_a_namespace_over_63_characters_is_too_large(length):
    with pytest.raises(TooLarge):
        check_namespace("a" * length)


@pytest.mark.parametrize("name", ["", None, "Acme", "acme_corp", "-acme", "a.b", "a b", "a/b"])
def test_a_namespace_of_the_wrong_shape_is_invalid(name):
    invalid_not_too_large(check_namespace, name)


# -- appends --------------------------------------------------------------------------------


def test_no_seq_or_a_positive_seq_is_accepted():
    assert check_seq(None) is None
    assert check_seq(1) == 1
    assert check_seq(10**12) == 10**12


@pytest.mark.parametrize("seq", [0, -1, True, False, 1.0, "1"])
def test_a_seq_that_is_not_a_positive_integer_is_invalid(seq):
    invalid_not_too_large(check_seq, seq)


def test_a_chunk_of_exactly_the_limit_is_accepted_as_bytes():
    assert check_chunk(b"x" * 8, 8) == b"x" * 8
    assert check_chunk(bytearray(b"ab"), 8) == b"ab"
    assert type(check_chunk(memoryview(b"ab"), 8)) is bytes


def test_a_chunk_one_byte_over_the_limit_is_too_large():
    with pytest.raises(TooLarge):
        check_chunk(b"x" * 9, 8)


@pytest.mark.parametrize("data", [b"", "text", None, [1, 2]])
def test_an_empty_or_non_bytes_chunk_is_invalid(data):
    invalid_not_too_large(check_chunk, data, 8)


# -- webhook events, grace, ttl -------------------------------------------------------------


def test_known_webhook_events_are_kept_in_order_without_repeats():
    events = ["job.output", "job.completed", "job.output"]
    assert check_events(events) == ("job.output", "job.completed")
    assert check_events(()) == ()


@pytest.mark.parametrize("events", [["job.finished"], ["job.completed", "Job.Completed"]])
def test_an_unknown_webhook_event_is_invalid(events):
    invalid_not_too_large(check_events, events)


@pytest.mark.parametrize("events", ["job.completed", None, {"job.completed": 1}])
def test_webhook_events_must_be_a_list(events):
    invalid_not_too_large(check_events, events)


def test_more_webhook_events_than_the_limit_is_too_large():
    assert len(check_events(["job.completed"] * limits.MAX_WEBHOOK_EVENTS)) == 1
    with pytest.raises(TooLarge):
        check_events(["job.completed"] * (limits.MAX_WEBHOOK_EVENTS + 1))


@pytest.mark.parametrize("grace_s", [0, 0.5, 3600, limits.MAX_SECRET_GRACE_S])
def test_a_grace_from_zero_to_thirty_days_is_accepted_as_seconds(grace_s):
    assert check_grace_s(grace_s) == float(grace_s)
    assert type(check_grace_s(grace_s)) is float


@pytest.mark.parametrize("grace_s", [-1, limits.MAX_SECRET_GRACE_S + 1, NAN, INF, True, "60", None])
def test_a_grace_out_of_range_or_not_a_number_is_invalid(grace_s):
    invalid_not_too_large(check_grace_s, grace_s)


def test_a_ttl_is_whole_seconds_from_one_to_ten_years():
    assert check_ttl_s("ttl", None) is None
    assert check_ttl_s("ttl", 1) == 1
    assert check_ttl_s("ttl", limits.MAX_TTL_S) == limits.MAX_TTL_S
    for bad in (0, limits.MAX_TTL_S + 1, 1.5, True, "60"):
        invalid_not_too_large(check_ttl_s, "ttl", bad)


def test_statuses_and_formats_parse_only_as_clients_write_them():
    assert parse_status("Cancelled") is JobStatus.CANCELLED
    assert parse_output_format("binary") is OutputFormat.BINARY
    invalid_not_too_large(parse_status, "cancelled")
    invalid_not_too_large(parse_output_format, "xml")


# -- limits -------------------------------------------------------------------------------


def test_size_and_text_checks_allow_the_limit_and_refuse_one_more():
    check_size("x", 10, 10)
    with pytest.raises(TooLarge):
        check_size("x", 11, 10)
    assert check_text("t", None, 3) is None
    assert check_text("t", "abc", 3) == "abc"
    with pytest.raises(TooLarge):
        check_text("t", "abcd", 3)
    invalid_not_too_large(check_text, "t", 5, 3)


# -- JobSpec --------------------------------------------------------------------------------


def test_a_job_spec_at_every_limit_is_accepted():
    url = "http://127.0.0.1/" + "a" * (limits.MAX_URL_CHARS - len("http://127.0.0.1/"))
    spec = JobSpec(
        title="t" * limits.MAX_TITLE_CHARS,
        description="d" * limits.MAX_DESCRIPTION_CHARS,
        tags=tuple("g" * limits.MAX_TAG_CHARS for _ in range(limits.MAX_TAGS)),
        webhook_url=url,
        webhook_events=("job.completed", "job.completed"),
        ttl_s=limits.MAX_TTL_S,
    )
    assert len(spec.webhook_url) == limits.MAX_URL_CHARS
    assert spec.webhook_events == ("job.completed",)


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "t" * (limits.MAX_TITLE_CHARS + 1)},
        {"description": "d" * (limits.MAX_DESCRIPTION_CHARS + 1)},
        {"tags": ("g",) * (limits.MAX_TAGS + 1)},
        {"tags": ("g" * (limits.MAX_TAG_CHARS + 1),)},
        {"webhook_url": "http://127.0.0.1/" + "a" * limits.MAX_URL_CHARS},
        {"webhook_events": ("job.completed",) * (limits.MAX_WEBHOOK_EVENTS + 1)},
    ],
    ids=["title", "description", "tag-count", "tag-length", "webhook-url", "event-count"],
)
def test_a_job_spec_field_over_its_limit_is_too_large(fields):
    with pytest.raises(TooLarge):
        JobSpec(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"title": 5},
        {"tags": ["a"]},
        {"tags": ("",)},
        {"tags": (1,)},
        {"webhook_url": "ftp://127.0.0.1/x"},
        {"webhook_url": "http://user:pw@127.0.0.1/"},
        {"webhook_url": "not a url"},
        {"webhook_events": ("job.finished",)},
        {"ttl_s": 0},
        {"output_format": "text"},
    ],
    ids=[
        "title-type",
        "tags-list",
        "empty-tag",
        "tag-type",
        "scheme",
        "credentials",
        "url-shape",
        "unknown-event",
        "ttl",
        "format-type",
    ],
)
def test_a_job_spec_field_of_the_wrong_shape_is_invalid(fields):
    invalid_not_too_large(JobSpec, **fields)


def test_from_metadata_takes_title_description_and_tags_and_refuses_others():
    spec = JobSpec.from_metadata({"title": "t", "tags": ["a", "b"]}, ttl_s=60)
    assert (spec.title, spec.tags, spec.ttl_s) == ("t", ("a", "b"), 60)
    assert JobSpec.from_metadata(None) == JobSpec()
    invalid_not_too_large(JobSpec.from_metadata, {"owner": "x"})
    invalid_not_too_large(JobSpec.from_metadata, {"tags": "a,b"})


def test_the_fingerprint_is_the_same_for_the_same_request_only():
    assert (
        JobSpec(title="a", tags=("x",)).fingerprint()
        == JobSpec(title="a", tags=("x",)).fingerprint()
    )
    assert JobSpec(title="a").fingerprint() != JobSpec(title="b").fingerprint()
    assert JobSpec().fingerprint() != JobSpec(output_format=OutputFormat.BINARY).fingerprint()


def test_the_fingerprint_of_a_request_never_changes():
    # Stored with every job: a resubmit after an upgrade must still match (200, not 409).
    assert JobSpec().fingerprint() == "c793b0f43cf8c0bd26b7e1370d674f49"
    full = JobSpec(
        title="t",
        description="d",
        tags=("a", "b"),
        webhook_url="http://127.0.0.1:9/h",
        webhook_events=("job.output", "job.completed"),
        ttl_s=60,
        output_format=OutputFormat.BINARY,
    )
    assert full.fingerprint() == "84db28d725b91e62de53f2373da6645e"


# -- ProgressUpdate -------------------------------------------------------------------------


@pytest.mark.parametrize("progress", [0, 100, 0.0, 100.0, 42.5])
def test_progress_from_0_to_100_inclusive_is_accepted_as_a_float(progress):
    update = ProgressUpdate(progress=progress)
    assert update.progress == float(progress) and type(update.progress) is float
    assert update.changes() == {"progress": float(progress)}


@pytest.mark.parametrize("progress", [-0.001, 100.001, 150, NAN, INF, True, "50"])
def test_progress_outside_0_to_100_or_not_a_number_is_invalid(progress):
    invalid_not_too_large(ProgressUpdate, progress=progress)


def test_an_estimated_completion_alone_is_a_progress_update():
    update = ProgressUpdate(estimated_completion=1_800_000_000)
    assert update.changes() == {"estimated_completion": 1_800_000_000.0}


def test_a_progress_update_needs_progress_or_an_estimate():
    invalid_not_too_large(ProgressUpdate)


@pytest.mark.parametrize("estimate", [True, "soon"])
def test_an_estimated_completion_that_is_not_a_timestamp_is_invalid(estimate):
    invalid_not_too_large(ProgressUpdate, estimated_completion=estimate)


@pytest.mark.parametrize("estimate", [NAN, INF])
def test_an_estimated_completion_that_is_not_finite_is_invalid(estimate):
    invalid_not_too_large(ProgressUpdate, estimated_completion=estimate)


# -- Completion -----------------------------------------------------------------------------


def test_a_completion_is_succeeded_or_failed_with_an_error_up_to_the_limit():
    assert Completion.parse("Succeeded").status is JobStatus.SUCCEEDED
    failed = Completion.parse("Failed", "e" * limits.MAX_ERROR_CHARS)
    assert failed.status is JobStatus.FAILED and len(failed.error) == limits.MAX_ERROR_CHARS


@pytest.mark.parametrize("status", ["Cancelled", "Running", "succeeded", "Done"])
def test_a_completion_with_another_status_is_invalid(status):
    invalid_not_too_large(Completion.parse, status)


def test_a_completion_error_over_its_limit_is_too_large():
    with pytest.raises(TooLarge):
        Completion(JobStatus.FAILED, "e" * (limits.MAX_ERROR_CHARS + 1))
