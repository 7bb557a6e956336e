# Idle memory per connection, native (/ws?token=) or Pusher (/app/KEY?protocol=7):
# holds N raw WebSockets (optionally each subscribed to one channel) and
# prints the server's VmRSS before and after. Plain Python, no packages.
#
#   roostd serve --listen 127.0.0.1:18933 --data D --pusher-app-id 1 --pusher-key app-key \
#       --pusher-public x --max-connections-per-ip 20000 &
#   python3 benches/pusher_idle.py 18933 $! native 5000 "$(roostd token --data D --sub idle --read x)" [x]
#   python3 benches/pusher_idle.py 18933 $! pusher 5000 app-key [x]
#
# (one server per run; `ulimit -n 20000` first)
# Idle memory per connection: N raw WebSockets held open against roostd,
# native (/ws?token=) or Pusher (/app/KEY?protocol=7); prints VmRSS before/after.
import base64, os, socket, sys, time
port, pid, kind, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
path = f"/ws?token={token}" if kind == "native" else f"/app/{token}?protocol=7"
before = rss(); socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    socks.append(s)
for s in socks:
    s.settimeout(10); got = b""
    while b"\r\n\r\n" not in got: got += s.recv(4096)
    assert got.startswith(b"HTTP/1.1 101"), got[:80]
sub = sys.argv[6] if len(sys.argv) > 6 else None
if sub:
    msg = ('{"op":"sub","ch":"%s"}' if kind == "native" else '{"event":"pusher:subscribe","data":{"channel":"%s"}}') % sub
    p = msg.encode(); mask = os.urandom(4)
    f = bytes([0x81, 0x80 | len(p)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(p))
    for s in socks: s.sendall(f)
time.sleep(2)
after = rss()
print(f"{kind} (sub={sub}): {n} idle connections, VmRSS {before} -> {after} KiB, {(after-before)*1024/n:.0f} bytes per connection")
