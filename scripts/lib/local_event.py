"""Writes a copy of an ECS event with the task's address replaced.

Real tasks have VPC addresses (10.0.2.11); on one machine each task gets a
loopback address of its own instead, so its sidecar inbound is reachable.
Usage: local_event.py EVENT_FILE ADDRESS OUT_FILE
"""

import json
import sys

src, address, out = sys.argv[1:4]
event = json.load(open(src))
detail = event["detail"]
for attachment in detail.get("attachments", []):
    for d in attachment.get("details", []):
        if d["name"] == "privateIPv4Address":
            d["value"] = address
for c in detail.get("containers", []):
    for ni in c.get("networkInterfaces", []):
        ni["privateIpv4Address"] = address
json.dump(event, open(out, "w"), indent=2)
