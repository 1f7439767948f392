# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Keep the members of a multi-server vLLM group (pipeline parallel across servers) alive together.

vLLM's own multi-node launch (``--nnodes``, ``--node-rank``, ``--headless``)
has no supervision across servers. What it does when a member dies was
measured on its CPU build in two containers (docs/planner.md, "Groups of
servers"): when a follower's worker is killed, the follower's process ends
(status 0) while the leader keeps answering ``/health`` with 200 and every
request hangs; when the leader dies, the follower waits forever for a leader
that will never call it. systemd restarts a unit on its own host only.

So each member's unit runs its vLLM command under this guard (the vllm role's
unit, ``ExecStart=<python> -I -s <guard> <options> -- <vLLM's command>``):

- the leader's guard listens on the group's network (``--address``,
  ``--port``; the unit allows only the members' addresses) and waits until
  every follower's guard has joined before it starts vLLM, so followers start
  first, as vLLM's documentation asks;
- a follower's guard connects to the leader's (retrying until
  ``--join-timeout``) and starts its headless vLLM once it is welcomed;
- both send a heartbeat every ``--beat`` seconds; when vLLM exits, or a peer
  closes its connection or is silent for ``--dead-after`` seconds, the guard
  kills its vLLM's whole process group at once (a broken group cannot finish
  a request, and a headless worker left without its API process ignores
  SIGTERM) and exits non-zero; a stop by systemd (SIGTERM) is graceful
  (SIGTERM to the process group, SIGKILL after ``--stop-timeout``). The leader's end closes every follower's connection, so one
  member's death takes the whole group down within seconds, and systemd
  (``Restart=always``) starts each member again, which forms the group anew.

Standard library only: the vllm role runs this file with vLLM's own
interpreter. ``main`` never ends in a traceback: bad options and lost peers
are one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time

ROLES = ("leader", "follower")
GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
MAX_NODES = 64
MAX_LINE = 128
# Exit statuses: vLLM ended (whatever its own status), a peer was lost, bad options, the group never formed.
EXIT_VLLM_ENDED = 1
EXIT_USAGE = 2
EXIT_NO_GROUP = 3
EXIT_PEER_LOST = 75


class GuardError(Exception):
    """The guard cannot go on; ``status`` is its exit status."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def _bounded(kind, low, high):
    def convert(text):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("%s is not within %s-%s" % (text, low, high))
        return value

    return convert


def _checked(pattern, what):
    def convert(text):
        if not pattern.match(text):
            raise argparse.ArgumentTypeError("%r is not a %s" % (text, what))
        return text

    return convert


def parser():
    p = argparse.ArgumentParser(prog="gpufleet-group-guard", description="Run one member of a vLLM group; end it when the group breaks.")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--group", type=_checked(GROUP_RE, "group name"), required=True)
    p.add_argument("--rank", type=_bounded(int, 0, MAX_NODES - 1), required=True)
    p.add_argument("--nnodes", type=_bounded(int, 2, MAX_NODES), required=True)
    p.add_argument("--address", type=_checked(ADDRESS_RE, "host address"), required=True, help="leader: where to listen; follower: the leader's")
    p.add_argument("--port", type=_bounded(int, 1024, 65535), required=True)
    p.add_argument("--members", default="", help="leader: the followers' addresses, comma-separated (others are refused)")
    p.add_argument("--beat", type=_bounded(float, 0.1, 60.0), default=1.0)
    p.add_argument("--dead-after", type=_bounded(float, 0.5, 600.0), default=5.0)
    p.add_argument("--join-timeout", type=_bounded(float, 1.0, 86400.0), default=900.0)
    p.add_argument("--stop-timeout", type=_bounded(float, 1.0, 3600.0), default=30.0)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then vLLM's command")
    return p


def parse(argv):
    """The options, checked: GuardError(EXIT_USAGE) for what argparse lets through."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        raise GuardError("bad options (see above)", EXIT_USAGE) from exc
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not command[0].startswith("/"):
        raise GuardError("after --, the absolute path of vLLM's interpreter and its arguments", EXIT_USAGE)
    if (args.role == "leader" and args.rank != 0) or (args.role == "follower" and not 0 < args.rank < args.nnodes):
        raise GuardError("rank %d does not suit a %s of %d nodes" % (args.rank, args.role, args.nnodes), EXIT_USAGE)
    members = [m for m in args.members.split(",") if m]
    if any(not ADDRESS_RE.match(m) for m in members) or len(members) > MAX_NODES:
        raise GuardError("--members must be up to %d host addresses, comma-separated" % MAX_NODES, EXIT_USAGE)
    if args.dead_after <= args.beat:
        raise GuardError("--dead-after (%s) must be longer than --beat (%s)" % (args.dead_after, args.beat), EXIT_USAGE)
    args.command = command
    args.members = members
    return args


def allowed_peers(members):
    """The IP addresses the leader accepts joins from (names resolved once, at start)."""
    allowed = set()
    for member in members:
        try:
            allowed.add(str(ipaddress.ip_address(member)))
        except ValueError:
            try:
                infos = socket.getaddrinfo(member, None, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise GuardError("member %s does not resolve: %s" % (member, exc), EXIT_NO_GROUP) from exc
            allowed.update(str(ipaddress.ip_address(info[4][0])) for info in infos)
    return allowed


def hello_line(group, rank):
    return "HELLO %s %d\n" % (group, rank)


def read_hello(line, group, nnodes, joined):
    """The rank a follower's first line announces, or None when it is not a fresh member of this group."""
    words = line.split()
    if len(words) != 3 or words[0] != "HELLO" or words[1] != group or not words[2].isdigit():
        return None
    rank = int(words[2])
    if not 0 < rank < nnodes or rank in joined:
        return None
    return rank


class Peer:
    """One connection to another member's guard: lines in, heartbeats out, the time it was last heard."""

    def __init__(self, sock, name):
        self.sock = sock
        self.name = name
        self.buffer = b""
        self.heard = time.monotonic()

    def send(self, text):
        try:
            self.sock.sendall(text.encode("ascii"))
            return True
        except OSError:
            return False

    def receive(self):
        """The complete lines that arrived, or None when the peer closed or sent garbage."""
        try:
            data = self.sock.recv(4096)
        except OSError:
            return None
        if not data:
            return None
        self.heard = time.monotonic()
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > MAX_LINE:
            return None
        return [line.decode("ascii", "replace") for line in lines]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def log(message):
    sys.stderr.write("gpufleet-group-guard: %s\n" % message)
    sys.stderr.flush()


def _accept_hello(server, args, allowed, joined, deadline):
    """Wait for one follower's HELLO until deadline; its rank and Peer, or None when this connection was refused."""
    try:
        conn, addr = server.accept()
    except OSError as exc:  # a connection reset before it was accepted
        log("a join attempt failed: %s" % exc)
        return None
    conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
    peer_ip = str(ipaddress.ip_address(addr[0].split("%")[0]))
    if allowed and peer_ip not in allowed:
        log("refused a join from %s (not a member of group %s)" % (peer_ip, args.group))
        conn.close()
        return None
    try:
        line = conn.recv(MAX_LINE).decode("ascii", "replace")
    except OSError:
        conn.close()
        return None
    rank = read_hello(line.strip(), args.group, args.nnodes, joined)
    if rank is None:
        log("refused a join from %s: %r" % (peer_ip, line.strip()[:60]))
        conn.close()
        return None
    conn.settimeout(None)
    return rank, Peer(conn, "rank %d (%s)" % (rank, peer_ip))


def gather_followers(args, allowed):
    """Leader: the followers' Peers, once every rank has joined (GuardError when the join timeout passes)."""
    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((args.address, args.port))
    except OSError as exc:
        server.close()
        raise GuardError("cannot listen on %s port %d: %s" % (args.address, args.port, exc), EXIT_NO_GROUP) from exc
    server.listen(MAX_NODES)
    joined = {}
    deadline = time.monotonic() + args.join_timeout
    epoch = secrets.token_hex(4)
    log("group %s: waiting for %d follower(s) on %s:%d" % (args.group, args.nnodes - 1, args.address, args.port))
    try:
        while len(joined) < args.nnodes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuardError("group %s: ranks %s did not join within %ss" % (args.group, missing(joined, args.nnodes), args.join_timeout), EXIT_NO_GROUP)
            if not select.select([server], [], [], min(left, 1.0))[0]:
                continue
            got = _accept_hello(server, args, allowed, joined, deadline)
            if got:
                joined[got[0]] = got[1]
                got[1].send("WELCOME %s\n" % epoch)
                log("group %s: %s joined" % (args.group, got[1].name))
    except GuardError:
        for peer in joined.values():
            peer.close()
        raise
    finally:
        server.close()
    return list(joined.values())


def missing(joined, nnodes):
    return ",".join(str(rank) for rank in range(1, nnodes) if rank not in joined) or "none"


def join_leader(args):
    """Follower: the Peer of the leader's guard, once it has welcomed this rank."""
    deadline = time.monotonic() + args.join_timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection((args.address, args.port), timeout=5)
        except OSError as exc:
            last_error = str(exc)
            time.sleep(1)
            continue
        peer = Peer(sock, "leader (%s)" % args.address)
        if peer.send(hello_line(args.group, args.rank)):
            try:
                line = sock.recv(MAX_LINE).decode("ascii", "replace")
            except OSError as exc:
                line = ""
                last_error = str(exc)
            if line.startswith("WELCOME "):
                sock.settimeout(None)
                log("group %s: rank %d joined the leader at %s:%d" % (args.group, args.rank, args.address, args.port))
                return peer
            last_error = "the leader did not welcome rank %d (%r)" % (args.rank, line.strip()[:60])
        peer.close()
        time.sleep(1)
    where = "%s:%d" % (args.address, args.port)
    raise GuardError("group %s: could not join the leader at %s within %ss: %s" % (args.group, where, args.join_timeout, last_error), EXIT_NO_GROUP)


def _signal_group(child, signum):
    """Send signum to vLLM's whole process group (its engine and workers with it); gone already is fine."""
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_child(child, timeout, broken=False):
    """Stop vLLM and every process it started; its status.

    ``broken``: the group broke (a member's vLLM ended, a peer was lost): nothing it holds can finish, and a
    headless worker whose API process died ignores SIGTERM (systemd then waits out TimeoutStopSec), so the
    whole process group is killed at once. Else (a stop by systemd) SIGTERM first, SIGKILL after timeout.
    """
    if broken:
        _signal_group(child, signal.SIGKILL)
        child.wait()
        return child.returncode
    if child.poll() is None:
        _signal_group(child, signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(child, signal.SIGKILL)
    child.wait()
    return child.returncode


def watch(child, peers, args):
    """Until vLLM exits or a peer is lost: heartbeats both ways. The reason, as a GuardError."""
    next_beat = 0.0
    while True:
        status = child.poll()
        if status is not None:
            return GuardError("vLLM ended with status %s; the group's other members stop too" % status, EXIT_VLLM_ENDED)
        now = time.monotonic()
        if now >= next_beat:
            for peer in peers:
                if not peer.send("BEAT\n"):
                    return GuardError("lost %s (send failed)" % peer.name, EXIT_PEER_LOST)
            next_beat = now + args.beat
        for peer in peers:
            if now - peer.heard > args.dead_after:
                return GuardError("%s silent for %ss" % (peer.name, args.dead_after), EXIT_PEER_LOST)
        ready = select.select([peer.sock for peer in peers], [], [], min(args.beat, 0.5))[0]
        for peer in peers:
            if peer.sock in ready and peer.receive() is None:
                return GuardError("lost %s (connection closed)" % peer.name, EXIT_PEER_LOST)


def run(args):
    """One member's life: form the group, start vLLM, watch; the exit status."""
    def on_term(signum, frame):  # pylint: disable=unused-argument
        # Once: a second signal must not interrupt the stop below.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise GuardError("stopped by signal %d" % signum, 0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    peers = []
    child = None
    status = EXIT_VLLM_ENDED
    try:
        if args.role == "leader":
            peers = gather_followers(args, allowed_peers(args.members))
        else:
            peers = [join_leader(args)]
        log("group %s: rank %d starts vLLM" % (args.group, args.rank))
        # Its own process group: what it starts (engine core, workers) is stopped with it.
        child = subprocess.Popen(args.command, start_new_session=True)  # the plan's command, checked by the role
        reason = watch(child, peers, args)
        raise reason
    except GuardError as exc:
        log(str(exc))
        status = exc.status
    finally:
        for peer in peers:
            peer.close()
        if child is not None:
            stop_child(child, args.stop_timeout, broken=status != 0)
    return status


def main(argv=None):
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except GuardError as exc:
        log(str(exc))
        return exc.status
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
