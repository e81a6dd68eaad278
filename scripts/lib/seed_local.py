"""Seeds the emulator as an operator's account would look: task roles with
kuma.io/* tags, task definitions whose sidecar follows the Kong Mesh ECS
example (so the ARNs in events/ resolve), and a private hosted zone.

Run with the venv's Python (boto3 comes with moto); the SDK's standard
AWS_ENDPOINT_URL points it at the emulator. Prints the hosted zone id.
"""

import json
import os

import boto3

TEMPLATE = (
    "---\ntype: Dataplane\nname: \"{{ dpname }}\"\nmesh: \"{{ mesh }}\"\nnetworking:\n"
    "  address: \"{{ address }}\"\n  inbound:\n  - port: {{ port }}\n    servicePort: {{ servicePort }}\n"
    "    tags:\n      kuma.io/service: \"{{ service }}\"\n      kuma.io/protocol: \"{{ protocol }}\"\n"
)
TRUST = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}],
})


def service(ecs, iam, name, image, port, service_port, protocol):
    role = iam.create_role(
        RoleName=f"{name}-task-role",
        AssumeRolePolicyDocument=TRUST,
        Tags=[
            {"Key": "kuma.io/type", "Value": "dataplane"},
            {"Key": "kuma.io/mesh", "Value": "default"},
            {"Key": "kuma.io/service", "Value": name},
        ],
    )["Role"]["Arn"]
    command = (
        "loopmesh-sidecar run --dataplane-var dpname=`hostname -s` --dataplane-var address=`hostname -i` "
        f"--dataplane-var mesh=default --dataplane-var port={port} --dataplane-var servicePort={service_port} "
        f"--dataplane-var service={name} --dataplane-var protocol={protocol} --bind-outbounds"
    )
    td = ecs.register_task_definition(
        family=name,
        taskRoleArn=role,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "workload", "image": image, "essential": True, "memory": 256},
            {
                "name": "loopmesh-sidecar",
                "image": "loopmesh/sidecar:latest",
                "essential": True,
                "memory": 128,
                "environment": [{"name": "KUMA_DATAPLANE_RUNTIME_RESOURCE", "value": TEMPLATE}],
                "entryPoint": ["sh", "-c"],
                "command": [command],
            },
        ],
    )
    return td["taskDefinition"]["taskDefinitionArn"]


def main():
    region = os.environ.get("AWS_REGION", "us-east-1")
    ecs = boto3.client("ecs", region_name=region)
    iam = boto3.client("iam", region_name=region)
    ec2 = boto3.client("ec2", region_name=region)
    r53 = boto3.client("route53", region_name=region)
    ecs.create_cluster(clusterName="loopmesh-demo")
    service(ecs, iam, "demo-app", "ghcr.io/kumahq/kuma-counter-demo", 15000, 5050, "http")
    service(ecs, iam, "redis", "redis:7", 16379, 6379, "tcp")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    zone = r53.create_hosted_zone(
        Name=os.environ.get("KUMA_DNS_SERVER_DOMAIN", "mesh.local"),
        CallerReference="loopmesh-local-run",
        HostedZoneConfig={"Comment": "loopmesh local run", "PrivateZone": True},
        VPC={"VPCRegion": region, "VPCId": vpc},
    )["HostedZone"]["Id"]
    print(zone.rsplit("/", 1)[-1])


if __name__ == "__main__":
    main()
