"""ADIOS2's SST sockets: listening on loopback only on one host, and Nagle's algorithm off from the start.

Two things ADIOS2 2.12 has no parameter for, done the same way: a process that opens a stream
points ADIOS2's own calls of libc's ``bind`` and ``connect`` (their slots in the global offset table
of the libadios2_* libraries, which the dynamic linker fills) at wrappers; no other socket of the
process is touched.

**Loopback.** SST's transports bind their listening socket to every interface whatever the
parameters say (EVPath's sockets transport, ``libcmsockets_LTX_non_blocking_listen`` in
thirdparty/EVPath/EVPath/cmsockets.c: ``sin_addr.s_addr = INADDR_ANY``; ENet's the same with
``ENET_HOST_ANY``). ``NetworkInterface``, ``ControlInterface``, ``DataInterface`` and the ``ADIOS2_IP``,
``ADIOS2_HOSTNAME``, ``ADIOS2_INTERFACE`` variables only choose the address a contact file publishes.
So the ``bind`` wrapper turns the wildcard address 0.0.0.0 into 127.0.0.1, and 127.0.0.1 is published
(``ADIOS2_IP``, read once, at the first listen), unless the stream's parameters name an interface
(a study across hosts). See docs/security.md.

**TCP_NODELAY from the first message.** SST's TCP control plane leaves Nagle's algorithm on: the
handshake of ``Open`` (a few small messages each way) then waits for the peer's delayed ACK at every
turn, ~44 ms a message here, ~220 ms a stream (measured: benchmarks/bench_member_phases.py, strace
of the reader; docs/offline.md), more than a small member's whole solve. Setting TCP_NODELAY after
``Open`` returns (:func:`datamove.streaming.adios.disable_nagle`) is too late for it, and nothing
can run during ``Open`` (it holds the GIL). So the ``bind`` wrapper sets TCP_NODELAY on a TCP socket
it binds (a listening socket: the connections it accepts inherit it, on Linux) and the ``connect``
wrapper on a TCP socket before it connects: writer and reader open in ~4 ms instead of ~220 ms.
Both are called by ADIOS2 on the thread that calls ``Open`` (which holds the GIL the wrappers, being
Python, take): the writer binds its listener and the reader connects inside ``Open``; the
connections the writer's network thread accepts are not wrapped, they inherit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Parameters that name an interface: a user who sets one chose to publish (and so to listen on) a
# network address; this module then leaves ADIOS2 as it is (a study across hosts).
INTERFACE_PARAMETERS = ("networkinterface", "controlinterface", "datainterface")

_SHT_RELA = 4
# Relocations that fill a slot with a function's address: x86-64 (EM 62) and AArch64 (EM 183).
_SLOT_RELOCATIONS = {62: {6, 7}, 183: {1025, 1026}}  # GLOB_DAT, JUMP_SLOT

_libc = ctypes.CDLL(None, use_errno=True)
_libc_bind = _libc.bind
_libc_bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
_libc_bind.restype = ctypes.c_int


_libc_connect = _libc.connect
_libc_connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
_libc_connect.restype = ctypes.c_int


@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, use_errno=True)
def _bind(fd: int, addr: int, length: int) -> int:
    """libc's ``bind(fd, addr, length)``, with an IPv4 wildcard address (0.0.0.0) made the one
    address streams listen on (127.0.0.1, or stream.interface's), and TCP_NODELAY set on the socket
    once bound."""
    try:
        if _listen is not None and addr and length >= 8:
            raw = bytearray(ctypes.string_at(addr, length))
            # struct sockaddr_in: sa_family (native unsigned short), port, then the IPv4 address.
            if int.from_bytes(raw[:2], sys.byteorder) == socket.AF_INET and raw[4:8] == bytes(4):
                raw[4:8] = _listen
                copy = (ctypes.c_char * length).from_buffer(raw)
                return _nodelay(fd, _libc_bind(fd, ctypes.addressof(copy), length))
        return _nodelay(fd, _libc_bind(fd, addr, length))
    except Exception:  # never let ADIOS2 believe a bind that did not happen succeeded
        ctypes.set_errno(errno.EINVAL)
        return -1


@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, use_errno=True)
def _connect(fd: int, addr: int, length: int) -> int:
    """libc's ``connect(fd, addr, length)``, TCP_NODELAY set on the socket first."""
    _nodelay(fd, 0)
    return _libc_connect(fd, addr, length)


def _nodelay(fd: int, result: int) -> int:
    """Set TCP_NODELAY on ``fd`` (:func:`set_nodelay`) if ``result`` (of the call wrapped) is 0;
    ``result``: a socket it cannot set it on is left as it is, the call wrapped decides success."""
    if result == 0:
        set_nodelay(fd)
    return result


def set_nodelay(fd: int) -> bool:
    """Set TCP_NODELAY on the descriptor ``fd`` if it is a TCP socket; whether it did. The
    descriptor stays its owner's (ADIOS2's): it is neither closed nor taken over."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False  # not a socket
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return True
        return False
    except OSError:
        return False
    finally:
        sock.detach()


_WRAPPERS = {b"bind": _bind, b"connect": _connect}


def _slots(path: str) -> dict[bytes, list[int]]:
    """Offsets (from the load address) of the slots through which the ELF library ``path`` calls
    each wrapped function (``bind``, ``connect``), by name; empty where it calls none. Raises
    OSError for a library this module cannot read."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise OSError(f"{path} is not a 64-bit little-endian ELF library")
    (machine,) = struct.unpack_from("<H", data, 0x12)
    if machine not in _SLOT_RELOCATIONS:
        raise OSError(f"{path}: machine type {machine} is neither x86-64 nor AArch64")
    # Slots are found by address relative to the segment at file offset 0: the process maps it at
    # the library's load address.
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    first = min(
        vaddr for p_type, p_offset, vaddr in
        (struct.unpack_from("<I4xQQ", data, phoff + i * phentsize) for i in range(phnum))
        if p_type == 1 and p_offset == 0  # PT_LOAD
    )
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # Section header: name, type, flags, addr, offset, size, link, info, addralign, entsize.
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    slots: dict[bytes, list[int]] = {}
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != _SHT_RELA:
            continue
        symtab, strtab = sections[link], sections[sections[link][6]]
        for entry in range(offset, offset + size, 24):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, entry)
            if (r_info & 0xFFFFFFFF) not in _SLOT_RELOCATIONS[machine] or not r_info >> 32:
                continue
            (st_name,) = struct.unpack_from("<I", data, symtab[4] + (r_info >> 32) * 24)
            start = strtab[4] + st_name
            name = data[start : data.index(b"\0", start)]
            if name in _WRAPPERS:
                slots.setdefault(name, []).append(r_offset - first)
    return slots


def _adios_libraries() -> dict[str, tuple[int, list[tuple[int, int, str]]]]:
    """ADIOS2's libraries mapped into this process: path -> (load address, [(start, end, perms)])."""
    libraries: dict[str, tuple[int | None, list]] = {}
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 6 or not Path(fields[5]).name.startswith("libadios2_"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            base, ranges = libraries.get(fields[5], (None, []))
            if base is None and int(fields[2], 16) == 0:
                base = start
            libraries[fields[5]] = (base, [*ranges, (start, end, fields[1])])
    return {path: (base, ranges) for path, (base, ranges) in libraries.items() if base is not None}


_patched = False
_listen: bytes | None = None  # the IPv4 address a wildcard bind becomes; None: left as it is
_warned = False
_PROT_READ, _PROT_WRITE = 1, 2
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_mprotect.restype = ctypes.c_int


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` on this host; a ValueError naming
    stream.interface and the host's interfaces when it has none."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24])  # SIOCGIFADDR
        except OSError:
            have = ", ".join(n for _, n in socket.if_nameindex())
            raise ValueError(f"key 'stream.interface': {name!r} is no network interface with an IPv4 address "
                             f"on host {socket.gethostname()} (its interfaces: {have})") from None


def prepare_sockets(parameters: Mapping[str, str], *, interface: str | None = None) -> bool:
    """Wrap ADIOS2's ``bind`` and ``connect`` in this process (see the module docstring): TCP_NODELAY
    from the first message, and streams that listen on one address and publish it: ``interface``'s
    (stream.interface: a study across hosts), or else, unless ``parameters`` (the IO's engine
    parameters) name an interface themselves (NetworkInterface, ControlInterface, DataInterface:
    then on every interface), 127.0.0.1. True once the streams listen on one address only.

    Call before the process's first SST Open (``make_io`` does); the first call decides for the
    process. Where it cannot wrap them (not Linux, a library it cannot read or patch) it warns
    once, naming docs/security.md, and returns False. ValueError naming stream.interface when this
    host has no such interface.
    """
    global _patched, _listen, _warned
    if _patched or _warned:
        return _listen is not None
    if interface:
        address = interface_address(interface)
    elif not any(str(key).lower() in INTERFACE_PARAMETERS for key in parameters):
        address = LOOPBACK
    else:
        address = None
    try:
        patched = 0
        for path, (base, ranges) in _adios_libraries().items():
            for name, offsets in _slots(path).items():
                for offset in offsets:
                    slot = base + offset
                    writable = any(start <= slot < end and "w" in perms for start, end, perms in ranges)
                    _write_slot(slot, ctypes.cast(_WRAPPERS[name], ctypes.c_void_p).value, writable=writable)
                    patched += 1
        if not patched:
            raise OSError("no ADIOS2 library that calls bind or connect is loaded")
    except (OSError, struct.error, IndexError, ValueError) as exc:
        # A warning, not an error: streams that work on every interface beat a study that cannot
        # start on a platform this cannot patch (not Linux, another ADIOS2 build).
        _warned = True
        print(
            f"datamove: warning: cannot keep ADIOS2 SST on one address in this process ({exc}): its "
            "streams listen on every interface; see docs/security.md (a host firewall closes them)",
            file=sys.stderr, flush=True,
        )
        return False
    if address is not None:
        os.environ["ADIOS2_IP"] = address  # the address contact files publish; read at the first listen
    _listen, _patched = (None if address is None else socket.inet_aton(address)), True
    return address is not None


def published_address() -> str | None:
    """The address this process's streams listen on and publish (after :func:`prepare_sockets`),
    or None where they listen on every interface."""
    return None if _listen is None else socket.inet_ntoa(_listen)


def _write_slot(slot: int, value: int, *, writable: bool) -> None:
    """Store ``value`` in the pointer at address ``slot``. A read-only slot (a library linked with
    full RELRO, ``-z now``, as conda-forge builds are) is made writable for the store, then
    read-only again."""
    if writable:
        ctypes.c_void_p.from_address(slot).value = value
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = slot & ~(page - 1)
    pages = 2 if slot + ctypes.sizeof(ctypes.c_void_p) > start + page else 1
    if _mprotect(start, pages * page, _PROT_READ | _PROT_WRITE) != 0:
        raise OSError(ctypes.get_errno(), f"its slot is read-only and cannot be made writable: "
                                          f"{os.strerror(ctypes.get_errno())}")
    try:
        ctypes.c_void_p.from_address(slot).value = value
    finally:
        _mprotect(start, pages * page, _PROT_READ)
