# What an environment serves until its first release. Terraform's task definition runs
# it on a public Python image, so the service's first deployment can complete before the
# project's image exists; every release replaces image and command with the service's.
# Health routes answer 200 (the load balancer's check), the service's other routes 503,
# any other path or method 404, each in the service's JSON error shape: the internet's
# scans of a public load balancer then count as 4xx, not as the 5xx that the deployment
# alarm watches, which would roll the first release back. Standard library only; it
# writes nothing.
import http.server
import json
import os
import urllib.parse

HEALTH = ("/v2/health/live", "/v2/health/ready")
# The service's routes (service/app.py): exact paths, and the model routes' prefix.
ROUTES = ("/predict", "/v2", "/metrics", "/openapi.json")
MODEL_ROUTES = "/v2/models/"
METHODS = ("GET", "HEAD", "POST")
NOT_YET = "no model is released to this environment yet: push to its branch (nox -s deploy-<env>)"


class Placeholder(http.server.BaseHTTPRequestHandler):
    def answer(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in HEALTH and self.command in METHODS:
            status, document = 200, {}
        elif (path in ROUTES or path.startswith(MODEL_ROUTES)) and self.command in METHODS:
            status, document = 503, {"error": NOT_YET}
        else:
            status, document = 404, {"error": f"no route {self.command} {path!r}"}
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def __getattr__(self, name):
        # Every method, not only those with a do_<METHOD>: the base class answers the
        # others 501, a 5xx.
        if name.startswith("do_"):
            return self.answer
        raise AttributeError(name)

    def log_message(self, *args):
        pass


address = (os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
http.server.ThreadingHTTPServer(address, Placeholder).serve_forever()
