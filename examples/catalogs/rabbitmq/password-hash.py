#!/usr/bin/env python3
"""Prints the hash RabbitMQ stores for a password (rabbit_password_hashing_sha256).

The password is read from stdin (or typed, without echo), never from argv,
so it stays out of shell history and `ps`. The output is what the catalog's
`mq_user` kind takes as `password_hash`:

    base64(salt ++ sha256(salt ++ utf8(password))), salt = 4 random bytes
"""
import base64
import getpass
import hashlib
import os
import sys


def rabbit_hash(password: str) -> str:
    salt = os.urandom(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


if __name__ == "__main__":
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        sys.exit("password-hash.py: an empty password")
    print(rabbit_hash(password))
