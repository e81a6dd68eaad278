"""Creates the builtin CA's key in the emulator's KMS, as the SAM template's
CaKey: ECC_NIST_P256, SIGN_VERIFY. Prints its ID."""

import boto3

key = boto3.client("kms").create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="loopmesh local CA")
print(key["KeyMetadata"]["KeyId"])
