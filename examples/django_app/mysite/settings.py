"""The smallest Django settings for the example: no database, no apps; the middleware
that tracks one event per request it answers."""

SECRET_KEY = "example-only-not-secret"  # an example: set your own from the environment
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = ["mysite.middleware.track_requests"]
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process TZ (America/Chicago by default); with --preload the master logs in it
