"""Prints shell exports of a session in a task role (what ECS's credential
endpoint gives a task), from the emulator's STS: the identity a sidecar
proves to the issuer. Usage: task_credentials.py ROLE_NAME"""

import sys

import boto3

role = sys.argv[1]
account = boto3.client("sts").get_caller_identity()["Account"]
creds = boto3.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/{role}", RoleSessionName="task")[
    "Credentials"
]
print(f"AWS_ACCESS_KEY_ID={creds['AccessKeyId']} AWS_SECRET_ACCESS_KEY={creds['SecretAccessKey']} "
      f"AWS_SESSION_TOKEN={creds['SessionToken']}")
