"""Celery workers: the app, the send and polling tasks, the beat schedule."""
