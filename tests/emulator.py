"""moto server with every request handled one at a time.

DynamoDB applies a conditional write or a transaction atomically; moto's
threaded server does not (two concurrent TransactWriteItems can both pass
their conditions). Serializing requests under one lock restores the
atomicity the allocator relies on, while keeping HTTP/1.1 keep-alive
connections from many clients.

Route53 in moto is also made strict in the two ways the real one is and
loopmesh depends on: a CREATE of a name that exists fails whatever its value
(moto only refuses an identical one, and overwrites otherwise), and a DELETE
must name a record that exists with exactly its values.

Run as: python tests/emulator.py HOST PORT
"""

import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.route53.exceptions import ResourceRecordAlreadyExists, Route53ClientError
from moto.route53.models import Route53Backend
from werkzeug.serving import run_simple


def _values(records):
    return sorted(r["Value"] if isinstance(r, dict) else r for r in records or [])


def _strict_route53() -> None:
    original = Route53Backend.change_resource_record_sets

    def change_resource_record_sets(self, zoneid, change_list):
        zone = self.get_hosted_zone(zoneid)
        # Judge the batch as Route53 does, change by change in order, before
        # applying any of it: all or nothing.
        present = {}
        for r in zone.rrsets:
            present[(r.name.lower(), r.type)] = (str(r.ttl), _values(r.records))
        for change in change_list:
            rrset = change["ResourceRecordSet"]
            name = rrset["Name"] if rrset["Name"].endswith(".") else rrset["Name"] + "."
            kind = rrset["Type"]
            key = (name.lower(), kind)
            if change["Action"] == "CREATE":
                if key in present:
                    raise ResourceRecordAlreadyExists(name=name, _type=kind)
                present[key] = (str(rrset.get("TTL")), _values(rrset.get("ResourceRecords")))
            elif change["Action"] == "DELETE":
                if key not in present:
                    raise Route53ClientError(
                        "InvalidChangeBatch",
                        f"Tried to delete resource record set [name='{name}', type='{kind}'] but it was not found",
                    )
                if present[key] != (str(rrset.get("TTL")), _values(rrset.get("ResourceRecords"))):
                    raise Route53ClientError(
                        "InvalidChangeBatch",
                        f"Tried to delete resource record set [name='{name}', type='{kind}'] but the values provided do not match the current values",
                    )
                del present[key]
        # Apply one by one, each CREATE as the UPSERT it now equals: moto's own
        # CREATE check judges against the whole batch's starting zone, and
        # matches any name sorting after the one created.
        for change in change_list:
            if change["Action"] == "CREATE":
                change = dict(change, Action="UPSERT")
            original(self, zoneid, [change])

    Route53Backend.change_resource_record_sets = change_resource_record_sets


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    _strict_route53()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # Drain the body inside the lock: moto builds responses lazily.
            return [b"".join(app(environ, start_response))]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
