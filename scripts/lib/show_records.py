"""Prints the A records of a hosted zone as a table (the emulator's Route53)."""

import sys

import boto3

zone = sys.argv[1]
r53 = boto3.client("route53")
print(f"{'NAME':<36} {'TYPE':<5} {'TTL':>5}  VALUE")
paginator = r53.get_paginator("list_resource_record_sets")
for page in paginator.paginate(HostedZoneId=zone):
    for rrset in page["ResourceRecordSets"]:
        if rrset["Type"] == "A":
            values = ", ".join(r["Value"] for r in rrset.get("ResourceRecords", []))
            print(f"{rrset['Name']:<36} {rrset['Type']:<5} {rrset.get('TTL', ''):>5}  {values}")
