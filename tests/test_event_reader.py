"""The event reader's rules without PostgreSQL: reads are (snapshot, xid, rows) as the hub's
one statement returns them, times are passed in. Milliseconds; tests/test_events.py runs the
same rules against real concurrent transactions."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from checkmate.errors import ServiceError
from checkmate.events.reader import (
    CONFIRM_DELAY,
    MAX_EVENT_ID,
    EventReader,
    EventRow,
    Snapshot,
    TaskFacts,
    check_event_id,
    check_resume,
    missing,
    start_position,
)
from checkmate.models import StageStatus, StatusEvent

T0 = 1_000.0  # a monotonic time


def row(event_id: int) -> EventRow:
    event = StatusEvent(
        event_id=event_id, task_id=uuid4(), status=StageStatus.QUEUED,
        previous_status=StageStatus.CREATED, stage=None, queue="default",
        changed_at=datetime.now(UTC),
    )
    return event, TaskFacts("demo", (), None, False)


def ids(rows: list[EventRow]) -> list[int]:
    return [event.event_id for event, _ in rows]


def started(position: int = 0) -> EventReader:
    reader = EventReader(max_hold=10.0)
    reader.start_at(position)
    return reader


def test_rows_without_holes_are_delivered_at_once_in_id_order() -> None:
    reader = started()
    delivery = reader.apply(Snapshot.parse("100:100:"), 100, [row(1), row(2), row(3)], T0)
    assert ids(delivery.ready) == [1, 2, 3]
    assert (delivery.late, delivery.above) == ([], 3)
    assert (reader.delivered, reader.read_upto, reader.holes) == (3, 3, {})


def test_a_rolled_back_hole_resolves_when_every_xid_of_its_range_has_ended() -> None:
    reader = started()
    # The read drew xid 106 after its snapshot: the hole's writer is in [100, 106].
    first = reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    assert ids(first.ready) == [1]
    assert list(reader.holes) == [2]
    assert reader.asked() == [2]
    # A read later, still without row 2, whose snapshot shows the whole range ended: rolled back.
    second = reader.apply(Snapshot.parse("107:107:"), 108, [], T0 + 0.05)
    assert ids(second.ready) == [3]
    assert (reader.delivered, reader.holes, reader.overdue) == (3, {}, {})


def test_a_hole_never_resolves_in_the_read_that_found_it() -> None:
    reader = started()
    # Nothing in the snapshot runs, but the read's own xid 106 is not below xmax yet.
    reader.apply(Snapshot.parse("106:106:"), 106, [row(1), row(3)], T0)
    assert list(reader.holes) == [2]
    assert reader.delivered == 1


def test_a_committed_hole_is_delivered_as_soon_as_a_read_sees_its_row() -> None:
    reader = started()
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    # Its writer (xid 103) still runs in the next snapshot, but the row is there: no waiting.
    delivery = reader.apply(Snapshot.parse("103:110:103"), 110, [row(2)], T0 + 0.05)
    assert ids(delivery.ready) == [2, 3]
    assert (reader.delivered, reader.holes) == (3, {})


def test_a_hole_whose_writer_has_an_xid_above_xmax_is_held() -> None:
    """The bug the xid bound fixes: a writer newer than the last commit is in no xip list."""
    reader = started()
    reader.apply(Snapshot.parse("100:101:"), 110, [row(1), row(3)], T0)
    # xip is empty, yet xids 108..110 may still run: xmax 108 does not pass 110.
    delivery = reader.apply(Snapshot.parse("108:108:"), 111, [], T0 + 1)
    assert delivery.ready == []
    assert list(reader.holes) == [2]
    # Once xmax passes the read's xid with nothing of the range running, the hole is gone.
    delivery = reader.apply(Snapshot.parse("111:112:111"), 112, [], T0 + 2)
    assert ids(delivery.ready) == [3]


def test_an_unrelated_running_xid_inside_the_range_holds_the_hole() -> None:
    reader = started()
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    assert reader.apply(Snapshot.parse("100:120:100"), 120, [], T0 + 1).ready == []
    # A running xid outside [100, 106] does not.
    assert ids(reader.apply(Snapshot.parse("115:120:115"), 121, [], T0 + 2).ready) == [3]


def test_a_hole_held_past_max_hold_is_skipped_then_delivered_late_if_it_commits() -> None:
    reader = started()
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3), row(4)], T0)
    running = Snapshot.parse("100:120:100")  # the hole's writer (xid 100) stays open
    assert reader.apply(running, 120, [], T0 + 9.9).ready == []
    skipped = reader.apply(running, 121, [], T0 + 10.0)
    assert ids(skipped.ready) == [3, 4]
    assert (reader.delivered, reader.holes, list(reader.overdue)) == (4, {}, [2])
    assert reader.asked() == [2]  # still looked for: it may commit
    late = reader.apply(Snapshot.parse("122:122:"), 122, [row(2), row(5)], T0 + 60)
    assert ids(late.late) == [2]
    assert ids(late.ready) == [5]
    assert reader.overdue == {}


def test_an_overdue_hole_is_forgotten_once_its_writer_rolled_back() -> None:
    reader = started()
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    reader.apply(Snapshot.parse("100:120:100"), 120, [], T0 + 11)
    assert list(reader.overdue) == [2]
    delivery = reader.apply(Snapshot.parse("121:121:"), 121, [], T0 + 12)
    assert (delivery.ready, delivery.late, reader.overdue, reader.asked()) == ([], [], {}, [])


def test_holes_from_one_read_share_a_range_and_release_in_order() -> None:
    reader = started(10)
    reader.apply(Snapshot.parse("200:205:"), 206, [row(12), row(15)], T0)
    assert sorted(reader.holes) == [11, 13, 14]
    # 13 commits; 11 and 14 are rolled back (range ended, rows absent).
    delivery = reader.apply(Snapshot.parse("207:207:"), 207, [row(13)], T0 + 0.1)
    assert ids(delivery.ready) == [12, 13, 15]
    assert reader.delivered == 15


def test_above_counts_only_new_rows_so_the_hub_knows_a_batch_was_full() -> None:
    reader = started()
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    delivery = reader.apply(Snapshot.parse("103:110:103"), 110, [row(2), row(4), row(5)], T0)
    assert delivery.above == 2


def test_next_wait_confirms_new_holes_soon_then_polls_then_sleeps() -> None:
    reader = started()
    assert reader.next_wait(keepalive=10, gap_poll=0.2) == 10
    reader.apply(Snapshot.parse("100:105:"), 106, [row(1), row(3)], T0)
    assert reader.next_wait(keepalive=10, gap_poll=0.2) == CONFIRM_DELAY
    assert reader.next_wait(keepalive=10, gap_poll=0.2) == 0.2  # still open, not new
    reader.apply(Snapshot.parse("107:107:"), 107, [], T0 + 1)
    assert reader.next_wait(keepalive=10, gap_poll=0.2) == 10


def test_missing_lists_the_gaps_between_the_first_and_last_id() -> None:
    assert missing([]) == []
    assert missing([5]) == []
    assert missing([3, 4, 7, 9]) == [5, 6, 8]


def test_start_position_is_below_the_oldest_hole_that_may_still_fill() -> None:
    first = Snapshot.parse("100:105:")
    # No holes: the newest id; an empty table: 0.
    assert start_position([1, 2, 3], first, 106, first, []) == 3
    assert start_position([], first, 106, first, []) == 0
    # Holes 4 and 6 whose writers may still run at the second read: below the oldest.
    assert start_position([3, 5, 7], first, 106, Snapshot.parse("100:106:"), []) == 3
    # Every writer ended by the second read: only the holes that filled meanwhile count.
    ended = Snapshot.parse("107:107:")
    assert start_position([3, 5, 7], first, 106, ended, []) == 7
    assert start_position([3, 5, 7], first, 106, ended, [6]) == 5


def test_an_event_id_outside_the_bigint_range_is_bad_input() -> None:
    check_event_id(0)
    check_event_id(MAX_EVENT_ID)
    for wrong in (-1, MAX_EVENT_ID + 1, 10**30):
        with pytest.raises(ServiceError) as raised:
            check_event_id(wrong)
        assert raised.value.code == ServiceError.BAD_USER_INPUT


@pytest.mark.parametrize(
    ("after", "oldest", "newest", "code", "says"),
    [
        (50, 10, 40, ServiceError.BAD_USER_INPUT, "event 50 does not exist yet; the newest is 40"),
        (1, None, 0, ServiceError.BAD_USER_INPUT, "there are no events yet"),
        (5, 10, 40, ServiceError.EVENTS_PRUNED, "the events after 5 were pruned"),
        (0, 2, 40, ServiceError.EVENTS_PRUNED, "the oldest kept is 2"),
    ],
)
def test_a_resume_point_the_table_cannot_serve_is_refused(
    after: int, oldest: int | None, newest: int, code: str, says: str
) -> None:
    with pytest.raises(ServiceError) as raised:
        check_resume(after, oldest, newest)
    assert raised.value.code == code
    assert says in raised.value.message


@pytest.mark.parametrize(
    ("after", "oldest", "newest"),
    [(40, 10, 40), (9, 10, 40), (25, 10, 40), (0, None, 0), (0, 1, 1)],
)
def test_a_resume_point_inside_the_kept_events_is_accepted(
    after: int, oldest: int | None, newest: int
) -> None:
    check_resume(after, oldest, newest)
