"""The batch actions' rules (README "Rules every batch action follows", DESIGN.md's action
table) pinned on the pure decide_* functions: a task record and what the store said in, the
decision out. No database, no store: thousands of cases in milliseconds. The service tests
(test_service_actions.py) keep the integration cases: the same rules through PostgreSQL and a
real store."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import pytest

from checkmate.actions import (
    DECIDE,
    NO_FACTS,
    BatchAction,
    Candidate,
    DbEffect,
    Decision,
    Rules,
    StoreEffect,
    StoreFacts,
    needs_lock_read,
    needs_task_object_read,
)
from checkmate.models import StageStatus, TaskLock

S = StageStatus
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUT = 60.0
TASK_ID = UUID(int=1)
KNOWN_KIND = "demo.pipeline"  # registered by checkmate.tasks itself
UNKNOWN_KIND = "no.such.kind"

Lock = Literal["none", "fresh", "stale", "unreadable"]
TaskObject = Literal["ok", "missing", "unreadable"]


@dataclass(frozen=True)
class Case:
    """One task as the rules see it; `orphaned` = its record was last updated longer than the
    lock timeout ago (what makes a RUNNING task without a lock a lost one)."""

    status: StageStatus
    cleaned: bool = False
    lock: Lock = "none"
    task_object: TaskObject = "ok"
    force: bool = False
    known_kind: bool = True
    orphaned: bool = False

    def candidate(self) -> Candidate:
        age = timedelta(seconds=TIMEOUT * 2 if self.orphaned else 1)
        name = KNOWN_KIND if self.known_kind else UNKNOWN_KIND
        return Candidate(TASK_ID, name, self.status, self.cleaned, NOW - age)

    def facts(self) -> StoreFacts:
        lock = None
        if self.lock in ("fresh", "stale"):
            beat = NOW - timedelta(seconds=TIMEOUT * 10 if self.lock == "stale" else 1)
            lock = TaskLock(owner="worker-1", acquired_at=beat, heartbeat_at=beat)
        return StoreFacts(
            lock=lock,
            lock_error="corrupt lock" if self.lock == "unreadable" else None,
            task_object_missing=self.task_object == "missing",
            task_object_error="bad json" if self.task_object == "unreadable" else None,
        )

    def rules(self) -> Rules:
        return Rules(now=NOW, lock_timeout=TIMEOUT, force=self.force)


def decide(action: BatchAction, case: Case) -> Decision:
    return DECIDE[action](case.candidate(), case.facts(), case.rules())


@dataclass(frozen=True)
class Applies:
    status: StageStatus
    store_effect: StoreEffect | None = None
    db_effect: DbEffect | None = None
    detail: str | None = None  # a fragment the detail must contain; None: no detail


@dataclass(frozen=True)
class Fails:
    reasons: tuple[str, ...]  # the error names one of these


Outcome = Applies | Fails

# --- the table, row by row ---------------------------------------------------------------------

CANCEL, UNLOCK = BatchAction.CANCEL, BatchAction.UNLOCK
CLEAN, INVOKE = BatchAction.CLEAN, BatchAction.INVOKE
DEL_LOCK, DEL_TASK = StoreEffect.DELETE_LOCK, StoreEffect.DELETE_TASK

ROWS: list[tuple[str, BatchAction, Case, Outcome]] = [
    # cancel: non-terminal tasks -> CANCELED; terminal ones fail. The store is not consulted.
    ("cancel created", CANCEL, Case(S.CREATED), Applies(S.CANCELED, db_effect=DbEffect.CANCEL)),
    ("cancel queued", CANCEL, Case(S.QUEUED), Applies(S.CANCELED, db_effect=DbEffect.CANCEL)),
    ("cancel running locked", CANCEL, Case(S.RUNNING, lock="fresh"),
     Applies(S.CANCELED, db_effect=DbEffect.CANCEL)),
    ("cancel completed", CANCEL, Case(S.COMPLETED), Fails(("terminal",))),
    ("cancel error", CANCEL, Case(S.ERROR), Fails(("terminal",))),
    ("cancel canceled", CANCEL, Case(S.CANCELED), Fails(("terminal",))),
    ("cancel cleaned completed", CANCEL, Case(S.COMPLETED, cleaned=True), Fails(("terminal",))),
    # unlock: a lock object, or RUNNING without one for longer than the lock timeout.
    ("unlock running stale", UNLOCK, Case(S.RUNNING, lock="stale"),
     Applies(S.ERROR, DEL_LOCK, DbEffect.WORKER_LOST, "went stale")),
    ("unlock running unreadable", UNLOCK, Case(S.RUNNING, lock="unreadable"),
     Applies(S.ERROR, DEL_LOCK, DbEffect.WORKER_LOST, "unreadable")),
    ("unlock running fresh", UNLOCK, Case(S.RUNNING, lock="fresh"), Fails(("fresh",))),
    ("unlock running fresh force", UNLOCK, Case(S.RUNNING, lock="fresh", force=True),
     Applies(S.ERROR, DEL_LOCK, DbEffect.WORKER_LOST, "by force")),
    ("unlock running orphaned", UNLOCK, Case(S.RUNNING, orphaned=True),
     Applies(S.ERROR, None, DbEffect.WORKER_LOST, "without a lock")),
    ("unlock running no lock recent", UNLOCK, Case(S.RUNNING), Fails(("holds no lock",))),
    ("unlock running no lock recent force", UNLOCK, Case(S.RUNNING, force=True),
     Fails(("holds no lock",))),
    ("unlock queued stale", UNLOCK, Case(S.QUEUED, lock="stale"), Applies(S.QUEUED, DEL_LOCK)),
    ("unlock completed stale", UNLOCK, Case(S.COMPLETED, lock="stale"),
     Applies(S.COMPLETED, DEL_LOCK)),
    ("unlock error unreadable", UNLOCK, Case(S.ERROR, lock="unreadable"),
     Applies(S.ERROR, DEL_LOCK)),
    ("unlock canceled fresh", UNLOCK, Case(S.CANCELED, lock="fresh"), Fails(("fresh",))),
    ("unlock canceled fresh force", UNLOCK, Case(S.CANCELED, lock="fresh", force=True),
     Applies(S.CANCELED, DEL_LOCK)),
    ("unlock queued orphaned no lock", UNLOCK, Case(S.QUEUED, orphaned=True),
     Fails(("holds no lock",))),
    ("unlock completed no lock", UNLOCK, Case(S.COMPLETED), Fails(("holds no lock",))),
    # clean: terminal, not cleaned, unlocked -> objects deleted, cleaned := true.
    ("clean completed", CLEAN, Case(S.COMPLETED), Applies(S.COMPLETED, DEL_TASK, DbEffect.CLEAN)),
    ("clean error", CLEAN, Case(S.ERROR), Applies(S.ERROR, DEL_TASK, DbEffect.CLEAN)),
    ("clean canceled", CLEAN, Case(S.CANCELED), Applies(S.CANCELED, DEL_TASK, DbEffect.CLEAN)),
    ("clean object missing", CLEAN, Case(S.COMPLETED, task_object="missing"),
     Applies(S.COMPLETED, DEL_TASK, DbEffect.CLEAN, "missing")),
    ("clean object unreadable", CLEAN, Case(S.ERROR, task_object="unreadable"),
     Applies(S.ERROR, DEL_TASK, DbEffect.CLEAN, "unreadable")),
    ("clean unknown kind", CLEAN, Case(S.CANCELED, known_kind=False),
     Applies(S.CANCELED, DEL_TASK, DbEffect.CLEAN)),
    ("clean created", CLEAN, Case(S.CREATED), Fails(("only terminal",))),
    ("clean queued", CLEAN, Case(S.QUEUED), Fails(("only terminal",))),
    ("clean running", CLEAN, Case(S.RUNNING, lock="fresh"), Fails(("only terminal", "locked"))),
    ("clean cleaned", CLEAN, Case(S.COMPLETED, cleaned=True), Fails(("already cleaned",))),
    ("clean fresh lock", CLEAN, Case(S.COMPLETED, lock="fresh"), Fails(("locked",))),
    ("clean stale lock", CLEAN, Case(S.ERROR, lock="stale"), Fails(("locked",))),
    ("clean unreadable lock", CLEAN, Case(S.ERROR, lock="unreadable"), Fails(("locked",))),
    ("clean locked force", CLEAN, Case(S.ERROR, lock="fresh", force=True), Fails(("locked",))),
    # invoke: CREATED/ERROR/CANCELED, not cleaned, unlocked, known kind, task object readable.
    ("invoke created", INVOKE, Case(S.CREATED), Applies(S.QUEUED, db_effect=DbEffect.QUEUE)),
    ("invoke error", INVOKE, Case(S.ERROR), Applies(S.QUEUED, db_effect=DbEffect.QUEUE)),
    ("invoke canceled", INVOKE, Case(S.CANCELED), Applies(S.QUEUED, db_effect=DbEffect.QUEUE)),
    ("invoke queued", INVOKE, Case(S.QUEUED), Fails(("only CREATED, ERROR or CANCELED",))),
    ("invoke running", INVOKE, Case(S.RUNNING), Fails(("only CREATED, ERROR or CANCELED",))),
    ("invoke completed", INVOKE, Case(S.COMPLETED), Fails(("only CREATED, ERROR or CANCELED",))),
    ("invoke cleaned", INVOKE, Case(S.ERROR, cleaned=True), Fails(("cleaned",))),
    ("invoke locked", INVOKE, Case(S.CANCELED, lock="stale"), Fails(("locked",))),
    ("invoke unreadable lock", INVOKE, Case(S.ERROR, lock="unreadable"), Fails(("locked",))),
    ("invoke object missing", INVOKE, Case(S.ERROR, task_object="missing"),
     Fails(("missing from the store; clean it",))),
    ("invoke object unreadable", INVOKE, Case(S.CANCELED, task_object="unreadable"),
     Fails(("unreadable (bad json); clean it",))),
    ("invoke unknown kind", INVOKE, Case(S.CREATED, known_kind=False),
     Fails((f"unknown task kind {UNKNOWN_KIND!r}",))),
]


def check(decision: Decision, case: Case, expected: Outcome) -> str | None:
    """What is wrong with `decision` for `case` (None: it follows the rule)."""
    previous = case.status
    if decision.task_id != TASK_ID or decision.previous is not previous:
        return f"task id/previous status not kept: {decision}"
    if isinstance(expected, Fails):
        if decision.applies or decision.error is None:
            return f"applied, expected to fail with one of {expected.reasons}: {decision}"
        if not any(reason in decision.error for reason in expected.reasons):
            return f"error {decision.error!r} names none of {expected.reasons}"
        # A refused task is left as it is: same status, nothing to do anywhere.
        if (decision.status, decision.store_effect, decision.db_effect) != (previous, None, None):
            return f"a failed decision carries a change: {decision}"
        return None
    if not decision.applies:
        return f"failed ({decision.error}), expected {expected}"
    got = (decision.status, decision.store_effect, decision.db_effect)
    if got != (expected.status, expected.store_effect, expected.db_effect):
        return f"got {got}, expected {expected}"
    if expected.detail is None:
        if decision.detail is not None:
            return f"unexpected detail {decision.detail!r}"
    elif decision.detail is None or expected.detail not in decision.detail:
        return f"detail {decision.detail!r} lacks {expected.detail!r}"
    return None


@pytest.mark.parametrize(
    ("action", "case", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_each_row_of_the_action_table(action: BatchAction, case: Case, expected: Outcome) -> None:
    assert check(decide(action, case), case, expected) is None


# --- every combination, against the table written as an oracle ---------------------------------

TERMINAL = {S.COMPLETED, S.ERROR, S.CANCELED}
INVOKABLE = {S.CREATED, S.ERROR, S.CANCELED}


def expect_cancel(case: Case) -> Outcome:
    if case.status in TERMINAL:
        return Fails(("terminal",))
    return Applies(S.CANCELED, db_effect=DbEffect.CANCEL)


def expect_unlock(case: Case) -> Outcome:
    running = case.status is S.RUNNING
    if case.lock == "none":
        if running and case.orphaned:
            return Applies(S.ERROR, None, DbEffect.WORKER_LOST, "worker lost")
        return Fails(("holds no lock",))
    if case.lock == "fresh" and not case.force:
        return Fails(("fresh",))
    if running:
        return Applies(S.ERROR, DEL_LOCK, DbEffect.WORKER_LOST, "lock")
    return Applies(case.status, DEL_LOCK)


def expect_clean(case: Case) -> Outcome:
    reasons = []
    if case.cleaned:
        reasons.append("already cleaned")
    if case.status not in TERMINAL:
        reasons.append("only terminal")
    if case.lock != "none":
        reasons.append("locked")
    if reasons:
        return Fails(tuple(reasons))
    detail = {"ok": None, "missing": "missing", "unreadable": "unreadable"}[case.task_object]
    return Applies(case.status, DEL_TASK, DbEffect.CLEAN, detail)


def expect_invoke(case: Case) -> Outcome:
    reasons = []
    if case.status not in INVOKABLE:
        reasons.append("only CREATED, ERROR or CANCELED")
    if case.cleaned:
        reasons.append("cleaned")
    if case.lock != "none":
        reasons.append("locked")
    if case.task_object != "ok":
        reasons.append("clean it")
    if not case.known_kind:
        reasons.append("unknown task kind")
    if reasons:
        return Fails(tuple(reasons))
    return Applies(S.QUEUED, db_effect=DbEffect.QUEUE)


ORACLE: dict[BatchAction, Callable[[Case], Outcome]] = {
    CANCEL: expect_cancel, UNLOCK: expect_unlock, CLEAN: expect_clean, INVOKE: expect_invoke,
}

EVERY_CASE = [
    Case(*values)
    for values in itertools.product(
        list(S), (False, True), ("none", "fresh", "stale", "unreadable"),
        ("ok", "missing", "unreadable"), (False, True), (True, False), (False, True),
    )
]


@pytest.mark.parametrize("action", list(BatchAction))
def test_every_status_and_flag_combination_follows_the_table(action: BatchAction) -> None:
    assert len(EVERY_CASE) == 6 * 2 * 4 * 3 * 2 * 2 * 2
    wrong = {
        case: problem
        for case in EVERY_CASE
        if (problem := check(decide(action, case), case, ORACLE[action](case))) is not None
    }
    assert not wrong, f"{len(wrong)} wrong, e.g. {next(iter(wrong.items()))}"


def test_the_table_rows_agree_with_the_oracle() -> None:
    """The hand-written rows and the combinatorial oracle say the same thing."""
    for label, action, case, expected in ROWS:
        oracle = ORACLE[action](case)
        assert type(oracle) is type(expected), label
        if isinstance(expected, Applies):
            assert isinstance(oracle, Applies)
            assert (oracle.status, oracle.store_effect, oracle.db_effect) == (
                expected.status, expected.store_effect, expected.db_effect
            ), label


@pytest.mark.parametrize("action", list(BatchAction))
def test_skipped_store_reads_never_change_a_decision(action: BatchAction) -> None:
    """The engine reads a task's lock (and task object) only when needs_*_read says so and
    decides on NO_FACTS otherwise: that is only sound if those facts could not matter."""
    for case in EVERY_CASE:
        task, rules = case.candidate(), case.rules()
        facts = case.facts()
        decision = DECIDE[action](task, facts, rules)
        if not needs_lock_read(action, task):
            assert DECIDE[action](task, NO_FACTS, rules) == decision, case
        elif not needs_task_object_read(action, task):
            without_object = StoreFacts(lock=facts.lock, lock_error=facts.lock_error)
            assert DECIDE[action](task, without_object, rules) == decision, case


def test_a_decision_result_reports_the_statuses_and_reason() -> None:
    applied = decide(INVOKE, Case(S.ERROR)).result()
    assert (applied.task_id, applied.previous_status, applied.status, applied.error) == (
        str(TASK_ID), S.ERROR, S.QUEUED, None
    )
    failed = decide(CLEAN, Case(S.RUNNING)).result()
    assert (failed.previous_status, failed.status) == (S.RUNNING, S.RUNNING)
    assert failed.error is not None
    assert "only terminal" in failed.error
