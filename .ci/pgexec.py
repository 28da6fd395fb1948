"""Runs one SQL statement on a PostgreSQL server that trusts the caller.

    python3 .ci/pgexec.py postgres://user@host:port/db "CREATE DATABASE x"

A minimal client of the frontend/backend protocol (startup, simple
query), so CI and the benchmarks need no psql. Exits non-zero with the
server's message on an error.
"""
import socket
import struct
import sys


def main(url: str, sql: str) -> None:
    rest = url.split("://", 1)[1]
    user, rest = rest.split("@", 1)
    hostport, _, db = rest.partition("/")
    db = db.split("?", 1)[0] or "postgres"
    host, _, port = hostport.partition(":")
    s = socket.create_connection((host, int(port or 5432)), timeout=30)

    def read_msg():
        head = b""
        while len(head) < 5:
            chunk = s.recv(5 - len(head))
            if not chunk:
                sys.exit("postgres: connection closed")
            head += chunk
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        body = b""
        while len(body) < length - 4:
            body += s.recv(length - 4 - len(body))
        return kind, body

    def until_ready():
        while True:
            kind, body = read_msg()
            if kind == b"E":
                fields = [f[1:].decode(errors="replace") for f in body.split(b"\0") if f[:1] == b"M"]
                sys.exit("postgres: " + "; ".join(fields))
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                sys.exit("postgres: the server asks for a password (trust auth expected)")
            if kind == b"Z":
                return

    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    until_ready()
    q = sql.encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
    until_ready()
    s.sendall(b"X" + struct.pack("!i", 4))
    s.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
