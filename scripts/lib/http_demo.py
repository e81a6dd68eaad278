"""The demo app's HTTP side, for scripts/local-run.

    http_demo.py serve PORT NAME       an HTTP/1.1 server answering NAME
    http_demo.py ask ZONE NAME PORT N [X_ROUTE]
        resolves NAME in the Route53 zone, sends N GETs on one keep-alive
        connection and says what came back; every answer must be 200 (and
        carry `x-route: X_ROUTE` when given)
"""

import collections
import http.client
import http.server
import sys
import time


def serve(port, name):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle holds the
        # body for the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def do_GET(self):
            body = f"hello from {name}\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def ask(zone, name, port, n, x_route=None):
    from resp import resolve

    vip = resolve(zone, name)
    for attempt in range(50):
        try:
            conn = http.client.HTTPConnection(vip, int(port), timeout=5)
            statuses, bodies, routes = collections.Counter(), collections.Counter(), collections.Counter()
            t0 = time.perf_counter()
            for _ in range(int(n)):
                conn.request("GET", "/", headers={"host": name})
                r = conn.getresponse()
                statuses[r.status] += 1
                bodies[r.read().decode().strip()] += 1
                routes[r.getheader("x-route", "-")] += 1
            took = (time.perf_counter() - t0) * 1000
            conn.close()
            print(f"{n} GETs on one keep-alive connection in {took:.0f} ms: status {dict(statuses)}, "
                  f"bodies {dict(bodies)}, x-route {dict(routes)}")
            if statuses.get(200) == int(n) and (x_route is None or routes.get(x_route) == int(n)):
                return
        except OSError as e:
            print(f"not yet: {e}")
        time.sleep(0.2)
    sys.exit("the HTTP outbound did not answer every request as expected")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:4])
    else:
        ask(*sys.argv[2:7])
