"""Replies, auto-replies and bounces from the reply mailbox (IMAP), turned into events.

``parse`` (bytes -> Incoming) and ``classify`` (-> Verdict) are pure; ``record`` writes what a
verdict means (events, suppressions, alerts, notes to the owner, postponed steps); ``imap``
talks to the server; ``poller`` keeps the mailbox position and runs passes.
"""
