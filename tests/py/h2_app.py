"""An h2c app (prior knowledge) that records what happens to its streams, for tests/smuggling.rs
(issue 17: a stream progress timeout).

Every request is answered 200 with --size bytes (default 1 MiB), sent as fast as the client's
flow-control windows allow. One JSON line per event is appended to --log:
{"event": "request", "stream": N, "path": P}, {"event": "ended", "stream": N} once a whole body
was sent, and {"event": "reset", "stream": N, "code": C} when the client reset a stream.

  h2_app.py [--host H] [--port P] [--ready-file F] --log FILE [--size BYTES]
"""

import argparse
import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from common import announce, server_args


def record(args, lock, **event):
    with lock, open(args.log, "a") as f:
        f.write(json.dumps(event) + "\n")


def serve(sock, args, lock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    left = {}  # stream -> bytes still to send

    def pump():
        for sid in list(left):
            while left[sid] > 0:
                try:
                    room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, left[sid])
                except (h2.exceptions.StreamClosedError, KeyError):
                    del left[sid]
                    break
                if room <= 0:
                    break
                conn.send_data(sid, b"x" * room)
                left[sid] -= room
            if sid in left and left[sid] == 0:
                conn.end_stream(sid)
                del left[sid]
                record(args, lock, event="ended", stream=sid)

    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers).get(b":path", b"").decode()
                    record(args, lock, event="request", stream=event.stream_id, path=path)
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(args.size))])
                    left[event.stream_id] = args.size
                elif isinstance(event, h2.events.StreamReset):
                    left.pop(event.stream_id, None)
                    record(args, lock, event="reset", stream=event.stream_id, code=int(event.error_code))
            pump()
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except OSError:
        pass
    finally:
        sock.close()


def main():
    parser = argparse.ArgumentParser()
    server_args(parser)
    parser.add_argument("--log", required=True)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(64)
    announce(sock.getsockname()[1], args.ready_file)
    lock = threading.Lock()
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn, args, lock), daemon=True).start()


if __name__ == "__main__":
    main()
