"""gunicorn for the Django project, with --preload: the same hooks as any WSGI app.

    gunicorn -c gunicorn.conf.py mysite.wsgi:application
"""

from mpsender.integrations.gunicorn import on_exit, on_starting, post_fork, worker_exit  # noqa: F401

bind = "127.0.0.1:8000"
workers = 4
preload_app = True  # Django is imported once in the master; each forked worker opens its own file
