"""Sending: ``router`` (which providers, in what order), ``policy`` (outcome ->
action, one table), ``send`` (a group: claim -> call -> apply)."""

from dispatcher.sending.send import MAX_COUNTDOWN, Publish, SendPipeline, lease_of

__all__ = ["MAX_COUNTDOWN", "Publish", "SendPipeline", "lease_of"]
