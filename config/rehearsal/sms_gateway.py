#!/usr/bin/env python3
"""A stand-in SMS gateway for rehearsals on one machine: accepts autosign's
POSTs (R8, docs/delivery.md "The gateway contract"), prints each
message, answers 200 with a message_id, and drops repeats by idempotency
key as a real gateway should. Not for production.

    python3 config/rehearsal/sms_gateway.py 8025
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

seen = {}


class Gateway(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        key = body.get("idempotency_key", "")
        if key in seen:
            print(f"repeat of {key} dropped", flush=True)
        else:
            seen[key] = f"gw-{len(seen) + 1}"
            print(f"SMS to {body.get('phone')}: {body.get('text')}", flush=True)
        answer = json.dumps({"message_id": seen[key]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8025
    HTTPServer(("127.0.0.1", port), Gateway).serve_forever()
