"""A view that tracks what happened in it; the middleware tracks every request besides."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

import mpsender


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


def page(request: HttpRequest) -> HttpResponse:
    mpsender.track(
        "Page Viewed",
        anonymous_id=request.GET.get("visitor", "anonymous"),
        properties={"path": request.path, "request_id": request.GET.get("id")},
    )
    return HttpResponse("tracked\n")
