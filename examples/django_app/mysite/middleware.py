"""Django middleware that tracks every request it answers (health checks aside)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

import mpsender


def track_requests(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if request.path != "/health":
            mpsender.track(
                "Request Handled",
                anonymous_id=request.GET.get("visitor", "anonymous"),
                properties={"path": request.path, "status": response.status_code,
                            "request_id": f"mw-{request.GET.get('id')}"},
            )
        return response

    return middleware
