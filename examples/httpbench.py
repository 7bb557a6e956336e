#!/usr/bin/env python3
# HTTP publish throughput with keep-alive: python3 examples/httpbench.py TOKEN CONNECTIONS SECONDS
# against roostd on 127.0.0.1:8092 (the token needs write on bench* and "api": true:
# roostd token --sub app --write '*' --api).
import http.client, sys, threading, time
tok, conns, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = [0]*conns; lat = [[] for _ in range(conns)]
def run(i):
    c = http.client.HTTPConnection("127.0.0.1", 8092)
    end = time.time() + secs
    n = 0
    while time.time() < end:
        t = time.perf_counter()
        c.request("POST", f"/api/channels/bench{i%4}/messages", body=b'{"v":1}', headers={"Authorization": "Bearer "+tok, "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 201, r.status
        lat[i].append(time.perf_counter()-t); n += 1
    counts[i] = n
ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
all_l = sorted(x for l in lat for x in l)
print(f"{conns} keep-alive connections: {sum(counts)/secs:.0f} acked publishes/s, p50 {all_l[len(all_l)//2]*1000:.2f} ms, p99 {all_l[int(len(all_l)*.99)]*1000:.2f} ms")
