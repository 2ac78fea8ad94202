"""A Celery app that sends analytics events from its tasks through mpsender.

Configure mpsender in the environment, start a worker, send it work:

    export MPSENDER_WRITE_KEY=...  MPSENDER_ENDPOINT=https://api.segment.io
    cd examples/celery_app
    celery -A tasks worker --concurrency 4 --max-tasks-per-child 100
    python -c "import tasks; [tasks.signup.delay(f'user-{i}', 'pro') for i in range(10)]"

connect() wires mpsender into the worker: the main process starts the one sender of
the host, each pool child connects to it without waiting, and a child leaving through
os._exit (max_tasks_per_child, shutdown) loses nothing. instrument_tasks=True adds one
"Celery Task Finished" event per task and an "$error" event per failure.
"""

from __future__ import annotations

import time

from celery import Celery

import mpsender
import mpsender.integrations.celery

app = Celery("tasks")
app.config_from_object("celeryconfig")
mpsender.integrations.celery.connect(app, instrument_tasks=True)


class PaymentDeclined(Exception):
    """The card was refused."""


@app.task
def signup(user_id: str, plan: str) -> str:
    """A business event tracked from inside a task."""
    mpsender.track("Signed Up", user_id=user_id, properties={"plan": plan})
    return user_id


@app.task
def charge(user_id: str, cents: int) -> int:
    """Fails for amounts over 100 000: the failure becomes an $error event."""
    if cents > 100_000:
        raise PaymentDeclined(f"card of {user_id} refused for {cents} cents")
    mpsender.track("Payment Charged", user_id=user_id, properties={"cents": cents})
    return cents


@app.task
def export_report(user_id: str, seconds: float) -> str:
    """Slow work. Past a hard time limit (--time-limit, or apply_async(time_limit=...)) Celery
    kills the child; the main process then sends the $error event (TimeLimitExceeded)."""
    time.sleep(seconds)
    mpsender.track("Report Exported", user_id=user_id, properties={"seconds": seconds})
    return user_id
