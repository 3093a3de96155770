"""API room: a thin Flask (APIFlask) app that stores uploads, records jobs and enqueues them.

It never imports TensorFlow or Keras: it reads model cards (JSON) and enqueues
jobs by task name.
"""

from api.app import create_app

__all__ = ["create_app"]
