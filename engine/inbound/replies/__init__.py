"""Replies, auto-replies and bounces from the reply mailbox (IMAP), turned into events.

``parse`` (bytes -> Incoming) and ``classify`` (-> Verdict) are pure; ``record`` writes what a
verdict means (events, suppressions, alerts, notes to the owner, postponed steps); ``imap``
talks to the server; ``poller`` keeps the mailbox position and runs passes.
"""

from engine.inbound.replies.imap import MailboxError
from engine.inbound.replies.poller import PollStats, poll_forever, poll_once
from engine.inbound.replies.record import Outcome, process_message

__all__ = ["MailboxError", "Outcome", "PollStats", "poll_forever", "poll_once", "process_message"]
