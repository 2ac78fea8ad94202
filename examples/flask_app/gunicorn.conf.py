"""gunicorn with gthread workers for the Flask app: the same hooks as any WSGI app.

    gunicorn -c gunicorn.conf.py app:app
"""

from mpsender.integrations.gunicorn import on_exit, on_starting, post_fork, worker_exit  # noqa: F401

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gthread"
threads = 4
