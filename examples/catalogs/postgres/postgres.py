#!/usr/bin/env python3
"""An executord exec backend for PostgreSQL databases and roles.

executord runs this once per backend call: the method name is the last
argument, the request is JSON on stdin, the reply goes to stdout as JSON.
Exit 75 is a transient failure (retried), 79 "no such object", any other
non-zero exit a permanent failure whose message is the last line of stderr.

The server is reached with psql and libpq's own variables (PGHOST, PGPORT,
PGUSER, PGPASSWORD; PGDATABASE, default `postgres`, is the database psql
connects to). Values go to psql through its environment and `\\getenv`, and
into SQL only through psql's quoting (`:'literal'`, `:"identifier"`), so
neither a name nor a verifier can inject SQL or show up in `ps`.

Every object executord makes carries the comment `executord:<resource id>`,
and its backend id is its OID: a rename keeps it, an object dropped and made
again by someone else under the same name is not taken for ours, and an
object that is not ours is never changed or dropped. Every method may run
again after a crash or a timeout and reach the same end.
"""

import json
import os
import re
import subprocess
import sys

TRANSIENT = 75
NOT_FOUND = 79
# The longest name PostgreSQL keeps (NAMEDATALEN - 1); it cuts longer ones.
MAX_NAME_BYTES = 63
VERIFIER = re.compile(
    r"^SCRAM-SHA-256\$[0-9]{1,7}:[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}:[A-Za-z0-9+/]+={0,2}$"
)
# SQLSTATEs worth a retry: connection trouble, overload, a shutdown, a
# deadlock or serialization failure, an object in use (a rename or drop
# while sessions are connected).
TRANSIENT_STATES = re.compile(r"^(08|53|57P|40|55006|55P03)")
# No such database, role or object.
NOT_FOUND_STATES = {"3D000", "42704"}


class Failure(Exception):
    """Ends the call with `code` and `message` as the last line of stderr."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def psql(sql, **values):
    """Runs `sql` (psql variables `values` set first); returns its JSON rows."""
    env = dict(os.environ)
    script = []
    for name, value in values.items():
        env["EXECUTORD_VALUE_" + name] = str(value)
        script.append(f"\\getenv {name} EXECUTORD_VALUE_{name}")
    script.append(sql)
    command = [
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
        "-d", os.environ.get("PGDATABASE", "postgres"), "-f", "-",
    ]
    try:
        done = subprocess.run(
            command, input="\n".join(script) + "\n", env=env, capture_output=True,
            text=True, timeout=25, check=False,
        )
    except FileNotFoundError:
        raise Failure("psql is not installed (or not in PATH)")
    except subprocess.TimeoutExpired:
        raise Failure("psql took longer than 25 s", TRANSIENT)
    if done.returncode != 0:
        raise classify(done.returncode, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def classify(returncode, stderr):
    """The failure a psql error stands for."""
    error = re.search(r"^(?:psql:[^\n]*?)?ERROR:\s+([0-9A-Z]{5}):\s*(.*)$", stderr, re.M)
    if error:
        state, message = error.groups()
        if TRANSIENT_STATES.match(state):
            return Failure(message, TRANSIENT)
        if state in NOT_FOUND_STATES:
            return Failure(message, NOT_FOUND)
        return Failure(message)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    message = (errors or lines or [f"psql exited with status {returncode}"])[-1]
    # 2: the connection to the server failed or broke.
    return Failure(message, TRANSIENT if returncode == 2 else 1)


def one(sql, **values):
    rows = psql(sql, **values)
    return rows[0] if rows else None


def checked_name(resource):
    name = resource["name"]
    if len(name.encode()) > MAX_NAME_BYTES:
        raise Failure(f"`{name}` is longer than PostgreSQL's {MAX_NAME_BYTES} bytes")
    return name


def tag(resource):
    return "executord:" + resource["id"]


# Databases -------------------------------------------------------------

DATABASE = """SELECT json_build_object(
    'oid', d.oid::text, 'name', d.datname, 'connection_limit', d.datconnlimit,
    'owner', pg_get_userbyid(d.datdba),
    'tag', shobj_description(d.oid, 'pg_database'))
  FROM pg_database d WHERE {where};"""


def our_database(resource):
    """The database of this resource, by its OID (else by its tag), or None."""
    oid = resource.get("backend_id")
    if oid:
        row = one(DATABASE.format(where="d.oid = :'oid'::oid"), oid=oid)
    else:
        row = one(DATABASE.format(where="shobj_description(d.oid, 'pg_database') = :'tag'"),
                  tag=tag(resource))
    # The OID may have been reused by a database that is not ours.
    return row if row and row["tag"] == tag(resource) else None


def database_reply(row):
    return {
        "backend_id": row["oid"],
        "runtime_state": "online",
        "status": {
            "database": row["name"],
            "connection_limit": row["connection_limit"],
            "owner": row["owner"],
        },
    }


def rename_database(row, name):
    if row["name"] != name:
        psql('ALTER DATABASE :"old" RENAME TO :"new";', old=row["name"], new=name)
        row = dict(row, name=name)
    return row


def create_database(request):
    resource = request["resource"]
    name = checked_name(resource)
    row = our_database(resource)
    if row is None:
        # Made under a name of its own first, then tagged, then renamed: a
        # run cut anywhere leaves a database that the next run knows as its
        # own, and never takes a stranger's database for one.
        scratch = "executord_" + resource["id"].replace("-", "")
        row = one(DATABASE.format(where="d.datname = :'scratch'"), scratch=scratch)
        if row is None:
            if one(DATABASE.format(where="d.datname = :'name'"), name=name):
                raise Failure(f"database `{name}` already exists and executord did not make it")
            psql('CREATE DATABASE :"scratch";', scratch=scratch)
        psql("COMMENT ON DATABASE :\"scratch\" IS :'tag';", scratch=scratch, tag=tag(resource))
        row = one(DATABASE.format(where="d.datname = :'scratch'"), scratch=scratch)
    return database_reply(rename_database(row, name))


def found_database(resource):
    row = our_database(resource)
    if row is None:
        raise Failure(f"database `{resource['name']}` (OID {resource.get('backend_id')}) is gone",
                      NOT_FOUND)
    return row


def update_database(request):
    resource = request["resource"]
    name = checked_name(resource)
    return database_reply(rename_database(found_database(resource), name))


def set_connection_limit(request):
    limit = request["params"]["limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or not -1 <= limit <= 10000:
        raise Failure("`limit` must be an integer from -1 to 10000")
    row = found_database(request["resource"])
    psql(f'ALTER DATABASE :"name" CONNECTION LIMIT {limit:d};', name=row["name"])
    return database_reply(dict(row, connection_limit=limit))


def pull_database(request):
    return database_reply(found_database(request["resource"]))


def delete_database(request):
    row = found_database(request["resource"])
    psql('DROP DATABASE :"name";', name=row["name"])
    return {}


# Roles -----------------------------------------------------------------

ROLE = """SELECT json_build_object(
    'oid', r.oid::text, 'name', r.rolname, 'login', r.rolcanlogin,
    'has_password', r.rolpassword IS NOT NULL,
    'tag', shobj_description(r.oid, 'pg_authid'))
  FROM pg_roles r WHERE {where};"""


def our_role(resource):
    oid = resource.get("backend_id")
    if oid:
        row = one(ROLE.format(where="r.oid = :'oid'::oid"), oid=oid)
    else:
        row = one(ROLE.format(where="shobj_description(r.oid, 'pg_authid') = :'tag'"),
                  tag=tag(resource))
    return row if row and row["tag"] == tag(resource) else None


def role_reply(row):
    return {
        "backend_id": row["oid"],
        "runtime_state": "login" if row["login"] else "nologin",
        "status": {"role": row["name"], "has_password": row["has_password"]},
    }


def role_settings(resource):
    """`LOGIN PASSWORD …` for the role's attributes, and the values it names."""
    attributes = resource.get("attributes") or {}
    login = "LOGIN" if attributes.get("login", True) else "NOLOGIN"
    verifier = attributes.get("password_verifier")
    if verifier is None:
        return f"{login} PASSWORD NULL", {}
    # PostgreSQL stores a verifier as it is, but would hash anything else as
    # a password: never let a password through.
    if not isinstance(verifier, str) or not VERIFIER.match(verifier):
        raise Failure("`password_verifier` is not a SCRAM-SHA-256 verifier")
    return f"{login} PASSWORD :'verifier'", {"verifier": verifier}


def create_role(request):
    resource = request["resource"]
    name = checked_name(resource)
    row = our_role(resource)
    if row is not None:
        # A run cut after its commit: make the role match again.
        return update_role(request, row)
    settings, values = role_settings(resource)
    if one(ROLE.format(where="r.rolname = :'name'"), name=name):
        raise Failure(f"role `{name}` already exists and executord did not make it")
    # One transaction: the role exists with its tag, or not at all.
    try:
        psql(f"""BEGIN;
CREATE ROLE :"name" {settings};
COMMENT ON ROLE :"name" IS :'tag';
COMMIT;""", name=name, tag=tag(resource), **values)
    except Failure:
        # Another run of this call may have made it meanwhile.
        if our_role(resource) is None:
            raise
    return role_reply(found_role(resource))


def found_role(resource):
    row = our_role(resource)
    if row is None:
        raise Failure(f"role `{resource['name']}` (OID {resource.get('backend_id')}) is gone",
                      NOT_FOUND)
    return row


def update_role(request, row=None):
    resource = request["resource"]
    name = checked_name(resource)
    row = row or found_role(resource)
    settings, values = role_settings(resource)
    if row["name"] != name:
        psql('ALTER ROLE :"old" RENAME TO :"new";', old=row["name"], new=name)
    psql(f'ALTER ROLE :"name" {settings};', name=name, **values)
    return role_reply(found_role(resource))


def pull_role(request):
    return role_reply(found_role(request["resource"]))


def delete_role(request):
    row = found_role(request["resource"])
    psql('DROP ROLE :"name";', name=row["name"])
    return {}


METHODS = {
    f.__name__: f
    for f in (
        create_database, update_database, set_connection_limit, pull_database, delete_database,
        create_role, update_role, pull_role, delete_role,
    )
}


def main():
    method = sys.argv[-1] if len(sys.argv) > 1 else os.environ.get("EXECUTORD_METHOD", "")
    handler = METHODS.get(method)
    try:
        if handler is None:
            raise Failure(f"unknown method `{method}`")
        reply = handler(json.load(sys.stdin))
    except Failure as failure:
        print(failure, file=sys.stderr)
        return failure.code
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
