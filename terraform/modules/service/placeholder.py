# What an environment serves until its first release. Terraform's task definition runs
# it on a public Python image, so the service's first deployment can complete before the
# project's image exists; every release replaces image and command with the service's.
# Health routes answer 200 (the load balancer's check), the service's own routes 503,
# any other path 404 as the service answers it, each in the service's JSON error shape:
# the internet's scans of a public load balancer then count as 4xx, not as the 5xx
# that the deployment alarm watches, which would roll the first release back.
# Standard library only; it writes nothing.
import http.server
import json
import os
import urllib.parse

HEALTH = ("/v2/health/live", "/v2/health/ready")
ROUTES = ("/predict", "/v2/", "/metrics", "/openapi.json")
NOT_YET = "no model is released to this environment yet: push to its branch (nox -s deploy-<env>)"


class Placeholder(http.server.BaseHTTPRequestHandler):
    def answer(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in HEALTH:
            status, document = 200, {}
        elif path == ROUTES[0] or path.startswith(ROUTES[1:]):
            status, document = 503, {"error": NOT_YET}
        else:
            status, document = 404, {"error": f"no route {path!r}; /openapi.json lists the routes"}
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


address = (os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
http.server.ThreadingHTTPServer(address, Placeholder).serve_forever()
