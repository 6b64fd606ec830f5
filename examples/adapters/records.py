"""DNS records behind executord's http driver (wire contract version 1)."""
import json, sys, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

records = {}  # backend_id -> the record
effects = {}  # idempotency key -> the first reply of an effect

class Adapter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the driver's pool wants

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        method, key, res = call["method"], call["idempotency_key"], call["resource"]
        if key in effects:  # a retried effect: its first reply, no second effect
            return self.reply(200, effects[key])
        if method == "create_record":
            backend_id = str(uuid.uuid4())
            records[backend_id] = {"name": res["name"], **res["attributes"]}
            effects[key] = {"backend_id": backend_id, "runtime_state": "active"}
        elif method == "delete_record":
            records.pop(res["backend_id"], None)
            effects[key] = {}
        elif method == "pull_record":  # pulls and checks tell the state now
            if res["backend_id"] not in records:
                return self.reply(404, {"detail": "no such record"})
            fqdn = records[res["backend_id"]]["name"] + ".example."
            return self.reply(200, {"runtime_state": "active", "status": {"fqdn": fqdn}})
        elif method == "is_record_deleted":
            return self.reply(200, {"done": res["backend_id"] not in records})
        else:
            return self.reply(400, {"detail": f"no method {method}"})
        self.reply(200, effects[key])

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

port = int(sys.argv[1]) if len(sys.argv) > 1 else 9100
ThreadingHTTPServer(("127.0.0.1", port), Adapter).serve_forever()
