#!/usr/bin/env python3
# usage: python3 benches/pipeline_attack.py target/release/roostd
# The issue-13 pipelining attack against a release roostd with default settings:
# one socket pipelines `GET / HTTP/1.1` for 8 s and never reads; another client
# probes /healthz every 20 ms. Prints the probe p50/p99/max and the peak RSS.
import socket, subprocess, sys, tempfile, threading, time, os
binary = sys.argv[1]
data = tempfile.mkdtemp()
env = dict(os.environ, ROOSTD_SECRET="x" * 40, RUST_LOG="warn")
srv = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:18999", "--data", data], env=env)
time.sleep(0.5)
def rss():
    for l in open(f"/proc/{srv.pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
idle = rss(); peak = idle
stop = time.time() + 8
sent = [0]
def attack():
    s = socket.create_connection(("127.0.0.1", 18999)); s.settimeout(0.1)
    burst = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 256
    while time.time() < stop:
        try: sent[0] += s.send(burst)
        except socket.timeout: pass
        except OSError: break
threading.Thread(target=attack, daemon=True).start()
lat = []; fails = 0
while time.time() < stop:
    t = time.time()
    try:
        c = socket.create_connection(("127.0.0.1", 18999), timeout=5)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.recv(100); c.close()
        if not r.startswith(b"HTTP/1.1 200"): fails += 1
    except OSError: fails += 1
    lat.append(time.time() - t)
    peak = max(peak, rss() or 0)
    time.sleep(0.02)
lat.sort()
print(f"{os.path.basename(binary)}: sent {sent[0]/1e6:.1f} MB of requests; /healthz n={len(lat)} fails={fails} p50={lat[len(lat)//2]*1000:.2f} ms p99={lat[len(lat)*99//100]*1000:.2f} ms max={lat[-1]*1000:.1f} ms; RSS idle {idle/1024:.1f} MiB peak {peak/1024:.1f} MiB")
srv.kill()
