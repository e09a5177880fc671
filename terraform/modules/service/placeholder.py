# What an environment serves until its first release. Terraform's task definition runs
# it on a public Python image, so the service's first deployment can complete before the
# project's image exists; every release replaces image and command with the service's.
# Health routes answer 200 (the load balancer's check), everything else 503 with the
# service's JSON error shape. Standard library only; it writes nothing.
import http.server
import json
import os

HEALTH = ("/v2/health/live", "/v2/health/ready")
NOT_YET = "no model is released to this environment yet: push to its branch (nox -s deploy-<env>)"


class Placeholder(http.server.BaseHTTPRequestHandler):
    def answer(self):
        status = 200 if self.path in HEALTH else 503
        body = json.dumps({} if status == 200 else {"error": NOT_YET}).encode()
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
