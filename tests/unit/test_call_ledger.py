"""The call ledger (``aioray_runner/_caller/ledger.py``), without Ray.

The rules (docs/failures.md, "A supervisor dies"): at a death the caller splits
the dead supervisor's calls exactly. Never announced: certainly never started,
sent on. Announced: may have started, so it fails with ``SupervisorDiedError``,
unless it was submitted with ``reruns=``: then it runs again (``current_attempt()``
says which run, and which supervisor died and how), and calls that never started
do not count as runs. A call you cancelled stays cancelled. Outcomes already
delivered stay delivered. Ray going away, or the runtime closing, ends every call.
"""

from __future__ import annotations

import time

from aioray_runner._caller.ledger import CallLedger

A, B = "supervisor A", "supervisor B"


def ledger_with(*calls: tuple[str, int]) -> CallLedger[str, str]:
    ledger: CallLedger[str, str] = CallLedger()
    for where, call_id in calls:
        ledger.sent(where, call_id, f"future {call_id}", f"parcel {call_id}")
    return ledger


def test_calls_never_announced_are_sent_on_and_announced_ones_are_lost() -> None:
    ledger = ledger_with((A, 1), (A, 2), (A, 3), (A, 4))
    ledger.announced(A, [2, 4])
    death = ledger.died(A, "supervisor A died (RayActorError)")
    assert death.lost == ["future 2", "future 4"]
    assert death.resend == ["parcel 1", "parcel 3"]
    assert (death.never_started, death.rerun) == (2, 0)
    # Sent on as they were: a first run still.
    assert ledger.rerun_of(1) is None and ledger.rerun_of(3) is None


def test_the_split_is_by_call_id_in_order() -> None:
    ledger = ledger_with((A, 9), (A, 3), (A, 5))
    assert ledger.died(A, "gone").resend == ["parcel 3", "parcel 5", "parcel 9"]


def test_a_death_touches_only_the_dead_supervisors_calls() -> None:
    ledger = ledger_with((A, 1), (B, 2))
    ledger.announced(B, [2])
    death = ledger.died(A, "gone")
    assert death.resend == ["parcel 1"] and death.lost == []
    assert ledger.in_flight(B) == ["future 2"] and ledger.holds(B, 2)
    assert ledger.in_flight(A) == [] and not ledger.holds(A, 1)


def test_an_announced_call_with_reruns_runs_again_as_the_next_attempt() -> None:
    ledger: CallLedger[str, str] = CallLedger()
    ledger.allow_reruns(1, 2)
    ledger.sent(A, 1, "future 1", "parcel 1")
    ledger.announced(A, [1])
    death = ledger.died(A, "supervisor A (pid 7) died (RayActorError: killed)")
    assert death.resend == ["parcel 1"] and death.lost == []
    assert (death.never_started, death.rerun) == (0, 1)
    rerun = ledger.rerun_of(1)
    assert rerun is not None
    assert rerun[:2] == (2, "supervisor A (pid 7) died (RayActorError: killed)")
    assert 0 <= time.time() - rerun[2] < 5  # when the loss was learned
    # Second run, on B: announced, and B dies too: one rerun was left.
    ledger.sent(B, 1, "future 1", "parcel 1")
    ledger.announced(B, [1])
    assert ledger.died(B, "supervisor B died").resend == ["parcel 1"]
    assert (ledger.rerun_of(1) or ())[:2] == (3, "supervisor B died")
    # Third run: no reruns left, so it is lost the next time.
    ledger.sent(A, 1, "future 1", "parcel 1")
    ledger.announced(A, [1])
    death = ledger.died(A, "again")
    assert death.lost == ["future 1"] and death.resend == []
    assert ledger.rerun_of(1) is None  # forgotten with it


def test_calls_that_never_started_do_not_count_as_runs() -> None:
    ledger: CallLedger[str, str] = CallLedger()
    ledger.allow_reruns(1, 1)
    ledger.sent(A, 1, "future 1", "parcel 1")
    ledger.died(A, "before it was announced")  # never started: sent on, still run 1
    assert ledger.rerun_of(1) is None
    ledger.sent(B, 1, "future 1", "parcel 1")
    ledger.announced(B, [1])
    assert ledger.died(B, "while it ran").resend == ["parcel 1"]  # its one rerun is intact
    assert (ledger.rerun_of(1) or ())[:2] == (2, "while it ran")


def test_a_cancelled_call_stays_cancelled_when_its_supervisor_dies() -> None:
    ledger = ledger_with((A, 1), (A, 2))
    ledger.cancel(1)
    death = ledger.died(A, "gone")
    assert death.resend == ["parcel 1", "parcel 2"]
    # The pool checks before it sends anything again: 1 is marked cancelled instead.
    assert ledger.take_cancelled(1) is True
    assert ledger.take_cancelled(1) is False  # forgotten once taken
    assert ledger.take_cancelled(2) is False


def test_delivered_outcomes_leave_the_book_and_are_not_part_of_a_death() -> None:
    ledger: CallLedger[str, str] = CallLedger()
    ledger.allow_reruns(2, 1)
    for call_id in (1, 2, 3):
        ledger.sent(A, call_id, f"future {call_id}", f"parcel {call_id}")
    ledger.announced(A, [1, 2])
    assert ledger.settled(A, 1, resend=False) == ("future 1", None)  # announced: no parcel
    assert ledger.settled(A, 2, resend=False) == ("future 2", None)
    assert ledger.settled(A, 3, resend=False) == ("future 3", "parcel 3")
    death = ledger.died(A, "gone")
    assert death.lost == [] and death.resend == []
    assert ledger.rerun_of(2) is None


def test_a_call_handed_back_keeps_its_notes_and_counts_its_sends() -> None:
    ledger: CallLedger[str, str] = CallLedger()
    ledger.allow_reruns(1, 1)
    ledger.sent(A, 1, "future 1", "parcel 1")
    # An upstream's supervisor died before call 1 could start: handed back.
    assert ledger.settled(A, 1, resend=True) == ("future 1", "parcel 1")
    assert ledger.count_send(1) == 1
    ledger.sent(B, 1, "future 1", "parcel 1")
    assert ledger.settled(B, 1, resend=True) == ("future 1", "parcel 1")
    assert ledger.count_send(1) == 2
    ledger.sent(A, 1, "future 1", "parcel 1")
    ledger.announced(A, [1])
    assert ledger.died(A, "gone").resend == ["parcel 1"]  # its reruns survived


def test_a_refused_message_ends_its_calls_on_that_supervisor() -> None:
    ledger = ledger_with((A, 1), (A, 2))
    assert ledger.refused(A, 1) == "future 1"
    assert ledger.refused(A, 1) is None
    assert ledger.died(A, "gone").resend == ["parcel 2"]


def test_news_from_a_supervisor_after_its_death_changes_nothing() -> None:
    ledger = ledger_with((A, 1))
    ledger.died(A, "gone")
    ledger.announced(A, [1])
    assert ledger.settled(A, 1, resend=False) == (None, None)
    assert ledger.refused(A, 1) is None
    assert ledger.all_in_flight() == []


def test_ray_lost_or_closing_ends_every_call_in_flight() -> None:
    ledger = ledger_with((A, 1), (A, 2), (B, 3))
    ledger.allow_reruns(3, 5)
    ledger.announced(B, [3])
    assert sorted(ledger.all_in_flight()) == ["future 1", "future 2", "future 3"]
    assert sorted(ledger.clear()) == ["future 1", "future 2", "future 3"]
    assert ledger.all_in_flight() == [] and ledger.clear() == []
    assert ledger.died(B, "gone").resend == []  # reruns do not outlive Ray


def test_notes_are_dropped_when_the_call_is_forgotten() -> None:
    ledger: CallLedger[str, str] = CallLedger()
    ledger.allow_reruns(1, 0)  # no reruns: nothing noted
    ledger.cancel(2)
    ledger.forget(2)
    assert ledger.take_cancelled(2) is False
    ledger.cancel(3)
    ledger.forget_all_notes()
    assert ledger.take_cancelled(3) is False
