"""Status events: the live feed behind the taskStatusChanged subscription.

- reader.py: the rules (pure, no I/O): which rows read from status_events are delivered and
  when (holes resolved by transaction visibility), which subscriptions an event matches, and
  where a subscription may resume (afterEventId).
- hub.py: the I/O around them, one EventHub per process: the LISTEN connection, the read loop,
  the fan-out to subscribers, their backfill, and event pruning.
- subscriber.py: one subscription's bounded queue; SubscriberLagging when it overflows.
"""

from checkmate.events.hub import LISTEN_APPLICATION_NAME, EventHub
from checkmate.events.reader import TaskFacts, matches
from checkmate.events.subscriber import SubscriberLagging

__all__ = ["LISTEN_APPLICATION_NAME", "EventHub", "SubscriberLagging", "TaskFacts", "matches"]
