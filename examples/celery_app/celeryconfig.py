"""Celery settings for the example: a broker and a result store that need no server.

kombu's filesystem transport keeps each message in a file; the directories live under
CELERY_DATA_DIR (default: <tmp>/mpsender-celery-example). Producer and worker must use
the same directory.

To use Redis or RabbitMQ instead, set the URLs (the filesystem options are then left out):

    CELERY_BROKER_URL=redis://localhost:6379/0            (pip install "celery[redis]")
    CELERY_BROKER_URL=amqp://guest:guest@localhost:5672//  (RabbitMQ, built in)
    CELERY_RESULT_BACKEND=redis://localhost:6379/1

tests/integration/test_celery.py runs this example on both: the filesystem transport and
a real Redis as broker and result store.
"""

import os
import tempfile

_data = os.environ.get("CELERY_DATA_DIR") or os.path.join(tempfile.gettempdir(), "mpsender-celery-example")

broker_url = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if broker_url.startswith("filesystem://"):
    _queue = os.path.join(_data, "queue")
    for _d in (_queue, os.path.join(_data, "control"), os.path.join(_data, "results")):
        os.makedirs(_d, exist_ok=True)
    broker_transport_options = {
        "data_folder_in": _queue,   # the worker reads here ...
        "data_folder_out": _queue,  # ... where producers write
        "control_folder": os.path.join(_data, "control"),
        "polling_interval": 0.1,
    }
result_backend = os.environ.get("CELERY_RESULT_BACKEND", "file://" + os.path.join(_data, "results"))

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
broker_connection_retry_on_startup = True
# One task at a time per child, so a warm shutdown finishes what it took.
worker_prefetch_multiplier = 1
# Results say STARTED while a task runs (the tests stop a worker while one does).
task_track_started = True
