"""The floor of a refusal: a bare WSGI app that answers every request with the same 503, no Django.

The overload benchmark serves it with gunicorn (sync workers, as the Procfile's web line) to the
same producers, while the worker hashes on the other core: what this machine gives for an answer
that costs nothing, against which the platform's refusal is held.
"""
import json

BODY = json.dumps({"error": "queue_full", "queue": "*", "depth": 100, "limit": 100, "retry_after": 1}).encode()
HEADERS = [("Content-Type", "application/json"), ("Retry-After", "1"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    # Read the request as a server that looks at it would (the platform reads the kind from the body).
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("503 Service Unavailable", HEADERS)
    return [BODY]
