#!/usr/bin/env python3
"""Forward 127.0.0.1:PORT of this network namespace to 127.0.0.1:PORT of another one.

    netns-bridge.py PORT NETNS_PATH OWNER_PID

scripts/emulators runs LocalStack in a private network namespace (`unshare -n`): its DynamoDB
Local child listens on every interface of a random port, with no option against it, and in that
namespace the only interface is loopback. This bridge makes the LocalStack gateway of that
namespace reachable on the host's loopback, and nothing else: it listens on 127.0.0.1 only, and
connects each accepted connection to the one port given inside the namespace (the socket is
created inside it with setns(2), root only, then used from here). It exits when OWNER_PID (the
process that holds the namespace) is gone.
"""

import asyncio
import os
import socket
import sys


def connect_inside(netns_fd: int, own_fd: int, port: int) -> socket.socket:
    os.setns(netns_fd, os.CLONE_NEWNET)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        os.setns(own_fd, os.CLONE_NEWNET)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def main() -> None:
    port, netns, owner = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    netns_fd = os.open(netns, os.O_RDONLY)
    own_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    loop = asyncio.get_running_loop()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        sock = connect_inside(netns_fd, own_fd, port)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            upstream_reader, upstream_writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=512)
    async with server:
        while True:
            await asyncio.sleep(1)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                return


if __name__ == "__main__":
    asyncio.run(main())
