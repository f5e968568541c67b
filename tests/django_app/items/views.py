"""JSON views: items (POST creates, GET lists or gets), a streamed upload that answers its
size and SHA-256, and a streaming response."""
import hashlib
import json
import os
import time

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from django.db import transaction
from django.db.models import F

from .models import Hit, Item, Upload

CHUNK = 256 * 1024


def ping(request):
    return HttpResponse("pong\n", content_type="text/plain")


def _item(i):
    return {"id": i.id, "key": i.key, "text": i.text, "node": i.node}


@csrf_exempt
def items(request):
    if request.method == "POST":
        if request.content_type == "application/json":
            data = json.loads(request.body or b"{}")
        else:
            data = request.POST
        key = str(data.get("key", ""))[:100]
        text = str(data.get("text", ""))[:200]
        item = Item.objects.create(key=key, text=text, node=settings.NODE_NAME)
        return JsonResponse({"item": _item(item), "written_on": settings.NODE_NAME}, status=201)
    qs = Item.objects.order_by("id")
    if "key" in request.GET:
        qs = qs.filter(key=request.GET["key"])
    found = [_item(i) for i in qs[:1000]]
    return JsonResponse({"served_by": settings.NODE_NAME, "count": len(found), "items": found})


def item(request, item_id):
    try:
        i = Item.objects.get(id=item_id)
    except Item.DoesNotExist:
        return JsonResponse({"served_by": settings.NODE_NAME, "error": "not found"}, status=404)
    return JsonResponse({"served_by": settings.NODE_NAME, "item": _item(i)})


@csrf_exempt
def upload(request):
    """multipart/form-data with a `file` field (spooled to a temp file by Django), or any
    other body read from the request stream in chunks. Never holds the body in memory."""
    if request.method != "POST":
        return JsonResponse({"error": "POST a file"}, status=405)
    digest = hashlib.sha256()
    size = 0
    if request.content_type == "multipart/form-data":
        f = request.FILES["file"]
        name = f.name
        for chunk in f.chunks(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    else:
        name = "raw"
        while True:
            chunk = request.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    up = Upload.objects.create(name=name, size=size, sha256=digest.hexdigest(), node=settings.NODE_NAME)
    return JsonResponse(
        {"id": up.id, "name": name, "size": size, "sha256": up.sha256, "written_on": settings.NODE_NAME},
        status=201,
    )


def stream(request):
    """Yields `piece 1`, then waits (at most `timeout` s) for the flag file `flag` in
    STREAM_FLAG_DIR to exist, then yields `piece 2` and `done`."""
    flag = os.path.basename(request.GET.get("flag", ""))
    timeout = float(request.GET.get("timeout", "10"))
    path = os.path.join(settings.STREAM_FLAG_DIR, flag) if flag else None

    def pieces():
        yield "piece 1 from %s\n" % settings.NODE_NAME
        deadline = time.monotonic() + timeout
        seen = False
        while path and time.monotonic() < deadline:
            if os.path.exists(path):
                seen = True
                break
            time.sleep(0.005)
        yield "piece 2 flag=%s\n" % ("seen" if seen else "timeout")
        yield "done\n"

    resp = StreamingHttpResponse(pieces(), content_type="text/plain")
    # Tell nginx not to buffer this response (standard for streamed Django responses).
    resp["X-Accel-Buffering"] = "no"
    resp["Cache-Control"] = "no-cache"
    return resp


def hits(request, page):
    """Counts a visit on GET (a view that writes on every GET, as hit counters and "last
    seen" updates do): on a replica the write fails, the database being read-only."""
    with transaction.atomic():
        hit, _ = Hit.objects.get_or_create(page=page)
        Hit.objects.filter(pk=hit.pk).update(count=F("count") + 1)
        hit.refresh_from_db()
    return JsonResponse({"page": page, "count": hit.count, "node": settings.NODE_NAME})
