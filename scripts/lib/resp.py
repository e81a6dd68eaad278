"""Redis protocol on a plain socket: the demo app's side of the local run,
and a stand-in server when Debian's redis-server is not installed.

  resp.py serve PORT NAME          answer PING, GET, SET, INFO like redis (NAME in "task")
  resp.py set PORT KEY VALUE        one SET against 127.0.0.1:PORT
  resp.py ask ZONE_ID NAME PORT     resolve NAME in the emulated zone, then PING and GET task there
"""

import socket
import socketserver
import sys
import time


def command(*args):
    out = f"*{len(args)}\r\n"
    for a in args:
        out += f"${len(a)}\r\n{a}\r\n"
    return out.encode()


def complete(data):
    if not data.endswith(b"\r\n"):
        return False
    if data.startswith(b"$") and not data.startswith(b"$-1"):
        return data.count(b"\r\n") >= 2
    return True


def reply(sock):
    data = b""
    while not complete(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def value(raw):
    if raw.startswith("$"):
        return raw.split("\r\n")[1]
    return raw[1:].strip()


def serve(port, name):
    store = {"task": name}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                if line.startswith(b"*"):
                    args = []
                    for _ in range(int(line[1:])):
                        self.rfile.readline()
                        args.append(self.rfile.readline().strip().decode())
                else:
                    args = line.decode().split()
                if not args:
                    continue
                op = args[0].upper()
                if op == "PING":
                    self.wfile.write(b"+PONG\r\n")
                elif op == "SET" and len(args) == 3:
                    store[args[1]] = args[2]
                    self.wfile.write(b"+OK\r\n")
                elif op == "GET" and len(args) == 2:
                    v = store.get(args[1])
                    self.wfile.write(b"$-1\r\n" if v is None else f"${len(v)}\r\n{v}\r\n".encode())
                else:
                    self.wfile.write(f"-ERR unknown command '{args[0]}'\r\n".encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def resolve(zone, name):
    """The VIP `name` has in the Route53 private zone (what the VPC resolver answers)."""
    import boto3

    r53 = boto3.client("route53")
    records = r53.list_resource_record_sets(HostedZoneId=zone, StartRecordName=name, StartRecordType="A")
    vip = next(
        r["ResourceRecords"][0]["Value"]
        for r in records["ResourceRecordSets"]
        if r["Type"] == "A" and r["Name"].rstrip(".") == name
    )
    print(f"demo-app: {name} resolves to {vip} (Route53 private zone {zone})")
    return vip


def ask(zone, name, port):
    vip = resolve(zone, name)
    for attempt in range(5):
        t0 = time.perf_counter()
        with socket.create_connection((vip, int(port)), timeout=5) as s:
            s.sendall(command("PING"))
            pong = value(reply(s))
            s.sendall(command("GET", "task"))
            task = value(reply(s))
        ms = (time.perf_counter() - t0) * 1000
        print(f"demo-app: connection {attempt + 1} to {name}:{port} -> PING: {pong}, GET task: {task} ({ms:.1f} ms)")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif mode == "set":
        with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5) as s:
            s.sendall(command("SET", sys.argv[3], sys.argv[4]))
            print(value(reply(s)))
    elif mode == "ask":
        ask(sys.argv[2], sys.argv[3], sys.argv[4])
