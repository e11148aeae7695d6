#!/usr/bin/env python3
"""fetch: pair with a device and fetch a web page from one of its services
through burrow, with libburrow loaded by ctypes.

    fetch.py HOME INVITE DEVICE SERVICE [PATH]

HOME is the client's home directory (its key and paired devices). INVITE is
an invite from the device's owner ("burrow device invite"); the device is
saved as DEVICE. An INVITE of "-" skips pairing: DEVICE is then a device
paired before. The page at PATH (default /) of the HTTP service SERVICE on
it is printed on standard output. BURROW_LIB names the library (default:
libburrow.so, found as the dynamic linker finds libraries).
"""
import ctypes
import os
import socket
import sys

lib = ctypes.CDLL(os.environ.get("BURROW_LIB", "libburrow.so"))
lib.burrow_client_new.argtypes = [ctypes.c_char_p]
lib.burrow_client_lan.argtypes = [ctypes.c_int, ctypes.c_int]
lib.burrow_pair.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
lib.burrow_dial.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
lib.burrow_close.argtypes = [ctypes.c_int]
lib.burrow_errmsg.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]


class BurrowError(Exception):
    pass


def check(ret, handle, what):
    """Returns ret, or raises BurrowError with the library's message."""
    if ret >= 0:
        return ret
    buf = ctypes.create_string_buffer(1024)
    lib.burrow_errmsg(handle, buf, len(buf))
    raise BurrowError(f"{what}: {buf.value.decode(errors='replace')}")


def main(argv):
    if len(argv) not in (5, 6):
        print("usage: fetch.py HOME INVITE DEVICE SERVICE [PATH]", file=sys.stderr)
        return 2
    home, invite, device, service = argv[1:5]
    path = argv[5] if len(argv) == 6 else "/"

    client = check(lib.burrow_client_new(home.encode()), 0, "open the client home")
    try:
        # The LAN is on by default: a device on this network is reached
        # there even with the relay down. FETCH_NO_LAN keeps to the relay
        # (the tests run this next to a relay on loopback, and ask no LAN).
        if "FETCH_NO_LAN" in os.environ:
            check(lib.burrow_client_lan(client, 0), client, "turn the LAN off")
        if invite != "-":
            check(lib.burrow_pair(client, invite.encode(), device.encode()), client, "pair")
        fd = ctypes.c_int()
        check(lib.burrow_dial(client, device.encode(), service.encode(), ctypes.byref(fd)), client, "dial")
        # The socket is ours: Python closes it when the with block ends.
        with socket.socket(fileno=fd.value) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {device}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    finally:
        lib.burrow_close(client)

    resp = b"".join(chunks)
    head, sep, body = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not sep or not status.startswith(b"HTTP/1.") or status.split()[1:2] != [b"200"]:
        print(f"fetch.py: {status.decode(errors='replace')}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BurrowError as e:
        print(f"fetch.py: {e}", file=sys.stderr)
        sys.exit(1)
