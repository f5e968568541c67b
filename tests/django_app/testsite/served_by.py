"""Test harness only: every answer names the node whose Django made it (`X-Served-By`), so
the tests can tell a replica's failure from the primary's."""
from django.conf import settings


class ServedByMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response["X-Served-By"] = settings.NODE_NAME
        return response
