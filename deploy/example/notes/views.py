"""GET / lists notes (served by any node); POST / adds one (litefs-proxy sends it to the
primary, then the next GET on any replica waits until the note has replicated)."""
import socket

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Note

NODE = socket.gethostname()


@csrf_exempt
def notes(request):
    if request.method == "POST":
        text = request.body.decode("utf-8", "replace")[:200] or "hello"
        note = Note.objects.create(text=text, node=NODE)
        return JsonResponse({"id": note.id, "written_on": NODE}, status=201)
    latest = list(Note.objects.order_by("-id").values("id", "text", "node")[:10])
    return JsonResponse({"served_by": NODE, "count": Note.objects.count(), "latest": latest})
