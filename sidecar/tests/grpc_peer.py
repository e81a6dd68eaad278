"""A real gRPC implementation (grpcio) on both ends of an outbound.

    grpc_peer.py serve PORT...   one server per port, each answering its name
    grpc_peer.py call HOST:PORT  3,000 unary calls on one channel, then a
                                 server stream of 10,000 messages; prints JSON

Methods take and return raw bytes, so no generated code is needed.
"""
import json
import sys
from concurrent import futures

import grpc

SERVICE = "loopmesh.Test"


def serve(ports):
    servers = []
    for port in ports:
        name = f"b{port}"

        def who(request, context, name=name):
            return name.encode()

        def count(request, context):
            for i in range(int(request.decode())):
                yield str(i).encode()

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Who": grpc.unary_unary_rpc_method_handler(who),
                "Count": grpc.unary_stream_rpc_method_handler(count),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
    print("ready", flush=True)
    sys.stdin.read()  # until the test ends


def call(target):
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary(f"/{SERVICE}/Who")
    counts = {}
    for _ in range(3000):
        name = who(b"", timeout=10).decode()
        counts[name] = counts.get(name, 0) + 1
    stream = channel.unary_stream(f"/{SERVICE}/Count")
    got = [m.decode() for m in stream(b"10000", timeout=60)]
    print(json.dumps({
        "counts": counts,
        "streamed": len(got),
        "in_order": got == [str(i) for i in range(10000)],
    }))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        call(sys.argv[2])
