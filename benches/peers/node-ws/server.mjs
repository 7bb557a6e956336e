// node-ws peer: the "usual JS choice" (Node + the `ws` package) implementing the
// peer protocol of benches/peers/README.md, so the same load generator can drive
// it side by side with roostd (issue #7).
//
//   /echo...  every text/binary message is sent back unchanged (same opcode)
//   /sub...   receives every text message published on /pub...; input ignored
//   /pub...   every text message is sent to all connected /sub... connections
//   other     (e.g. /idle) held open, nothing sent
//
// Node is single-threaded; permessage-deflate is off; loopback only.
// Usage: node server.mjs [PORT]   (default 19100)
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? 19100);
const subscribers = new Set();

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
});

wss.on('listening', () => {
  process.stdout.write(`listening on 127.0.0.1:${port}\n`);
});

wss.on('connection', (ws, req) => {
  const path = req.url ?? '/';
  ws.on('error', () => {});
  if (path.startsWith('/echo')) {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (path.startsWith('/sub')) {
    subscribers.add(ws);
    ws.on('close', () => subscribers.delete(ws));
  } else if (path.startsWith('/pub')) {
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      for (const sub of subscribers) sub.send(data, { binary: false });
    });
  }
  // Anything else: held open; `ws` answers pings and close frames itself.
});
