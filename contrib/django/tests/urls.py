from django.db import connection
from django.http import HttpResponse
from django.urls import path


def read(request):
    with connection.cursor() as c:
        c.execute("SELECT count(*) FROM notes")
        (n,) = c.fetchone()
    return HttpResponse(f"notes: {n}")


def write(request):
    # A view that writes whatever the method (a "last seen" update).
    with connection.cursor() as c:
        c.execute("INSERT INTO notes (body) VALUES ('x')")
    return HttpResponse("wrote")


def touch_session(request):
    # Writes only through the session, which SessionMiddleware saves after the view.
    request.session["visits"] = request.session.get("visits", 0) + 1
    return HttpResponse("visits")


def caught(request):
    # A view that swallows its failed write and answers anyway.
    try:
        write(request)
    except Exception:
        pass
    return HttpResponse("recovered")


urlpatterns = [
    path("read", read),
    path("write", write),
    path("session", touch_session),
    path("caught", caught),
]
