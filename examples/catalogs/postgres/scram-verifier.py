#!/usr/bin/env python3
"""Prints the SCRAM-SHA-256 verifier of a password read from stdin.

    ./scram-verifier.py <<<'the password'        # or type it: it is not echoed

The verifier is what PostgreSQL stores for a password (pg_authid.rolpassword)
and what the `role` kind takes as `password_verifier`: the password itself
never leaves this machine. It follows RFC 5802 and RFC 7677 with PostgreSQL's
defaults (4096 iterations, a 16-byte random salt). PostgreSQL would SASLprep
a non-ASCII password first; this helper takes ASCII passwords only.
"""

import base64
import getpass
import hashlib
import hmac
import os
import sys

ITERATIONS = 4096


def verifier(password, salt=None, iterations=ITERATIONS):
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def main():
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("an empty password", file=sys.stderr)
        return 1
    if not password.isascii():
        print("only ASCII passwords: PostgreSQL would normalise others first", file=sys.stderr)
        return 1
    print(verifier(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
