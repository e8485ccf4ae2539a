"""The bridge's TLS socket against a real TLS server: a read takes every record that has arrived, and a
record split across TCP segments completes on a later read, never stays unseen by select()."""

from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest

from bridges.tls_socket import TlsSocket
from devtools.stack.pki import SERVER, ensure_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ensure_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1"])


@pytest.fixture
def server(pki):
    """``server(script)``: a one-connection TLS server on a free port running ``script(tls_conn)``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = pki.certificate(SERVER)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    threads = []

    def start(script) -> int:
        def serve():
            raw, _ = listener.accept()
            try:
                conn = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate (the other-CA test)
            with conn:
                script(conn)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return listener.getsockname()[1]

    yield start
    listener.close()
    for t in threads:
        t.join(5)


def client(pki, port: int) -> TlsSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = TlsSocket(sock, ssl.create_default_context(cafile=str(pki.ca_file)), "127.0.0.1")
    tls.handshake()
    return tls


def test_one_read_returns_every_record_that_arrived(pki, server):
    """Mosquitto writes one TLS record per PUBLISH; an SSLSocket would return them one per recv()."""
    sent = threading.Event()
    done = threading.Event()

    def script(conn):
        for i in range(500):
            conn.sendall(f"message {i:04d};".encode())  # one record each
        sent.set()
        done.wait(5)

    tls = client(pki, server(script))
    sent.wait(5)
    expected = b"".join(f"message {i:04d};".encode() for i in range(500))
    got = b""
    while len(got) < len(expected):
        assert select.select([tls], [], [], 5)[0], "data arrived but select() did not see it"
        got += tls.recv(1 << 20)
    done.set()
    assert got == expected


def test_a_record_split_across_segments_is_read_whole_once_its_rest_arrives(pki, server):
    release = threading.Event()

    def script(conn):
        conn.sendall(b"first")
        release.wait(5)
        conn.sendall(b"x" * 40_000)  # three records, several TCP segments

    tls = client(pki, server(script))
    assert tls.recv(1 << 20) == b"first"
    release.set()
    got = b""
    while len(got) < 40_000:
        assert select.select([tls], [], [], 5)[0]
        got += tls.recv(1 << 20)
    assert got == b"x" * 40_000


def test_a_server_with_a_certificate_from_another_ca_is_refused(pki, server, tmp_path):
    other = ensure_pki(tmp_path / "other", ["127.0.0.1"])
    port = server(lambda conn: None)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = TlsSocket(sock, ssl.create_default_context(cafile=str(other.ca_file)), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls.handshake()
    tls.close()


def test_sent_data_reaches_the_server_and_a_close_reads_as_empty(pki, server):
    received = []

    def script(conn):
        received.append(conn.recv(100))

    tls = client(pki, server(script))
    tls.sendall(b"hello")
    assert tls.recv(100) == b""
    assert received == [b"hello"]
