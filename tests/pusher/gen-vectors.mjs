// Produces vectors.json: requests and signatures made by the real `pusher`
// server library (pinned in package.json), which src/proto's unit tests check
// roostd against. The library's requests are caught by a server on loopback
// and recorded exactly as they arrive (method, path and query as sent, body).
//
//   cd tests/pusher && npm ci && node gen-vectors.mjs > vectors.json
//
// The clock is pinned so the output is the same on every run.
import http from "node:http";
import Pusher from "pusher";

const NOW_MS = 1_700_000_000_000;
Date.now = () => NOW_MS;

const app = { appId: "4242", key: "app-key", secret: "app-secret-of-32-bytes-or-more!!" };

const requests = [];
const server = http.createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    requests.push({ method: req.method, url: req.url, body });
    res.setHeader("content-type", "application/json");
    res.end("{}");
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pusher = new Pusher({ ...app, host: "127.0.0.1", port: server.address().port, useTLS: false });
const other = new Pusher({ ...app, secret: "some-other-secret", host: "127.0.0.1", port: server.address().port, useTLS: false });

const calls = [
  ["trigger one channel", () => pusher.trigger("orders", "OrderShipped", { id: 7, note: "ü \"q\"" })],
  ["trigger many channels, a socket to leave out, info", () =>
    pusher.trigger(["private-a", "presence-b", "c"], "my-event", "plain text", { socket_id: "123.456", info: "subscription_count,user_count" })],
  ["trigger batch", () => pusher.triggerBatch([
    { channel: "a", name: "e1", data: { x: 1 } },
    { channel: "presence-b", name: "e2", data: "two", info: "user_count" },
  ])],
  ["send to user", () => pusher.sendToUser("user-9", "note", { hi: true })],
  ["channels with a prefix filter", () => pusher.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })],
  ["one channel's info", () => pusher.get({ path: "/channels/presence-room.1", params: { info: "subscription_count,user_count" } })],
  ["presence users", () => pusher.get({ path: "/channels/presence-room.1/users" })],
  ["terminate a user's connections", () => pusher.terminateUserConnections("user-9")],
  ["signed with another secret", () => other.trigger("orders", "OrderShipped", "x")],
];
const out = { app, now: NOW_MS / 1000, requests: [], auth: [] };
for (const [what, call] of calls) {
  const before = requests.length;
  await call();
  if (requests.length !== before + 1) throw new Error(`${what}: expected one request`);
  out.requests.push({ what, ...requests[before] });
}
server.close();

const socketId = "1234.5678";
out.auth.push({ what: "private channel", socket_id: socketId, channel: "private-orders.7", ...pusher.authorizeChannel(socketId, "private-orders.7") });
out.auth.push({ what: "presence channel, numeric user id", socket_id: socketId, channel: "presence-room.1",
  ...pusher.authorizeChannel(socketId, "presence-room.1", { user_id: 42, user_info: { name: "Ann \u00e9" } }) });
out.auth.push({ what: "presence channel, string user id, no info", socket_id: socketId, channel: "presence-room.1",
  ...pusher.authorizeChannel(socketId, "presence-room.1", { user_id: "u-1" }) });
out.auth.push({ what: "user sign-in", socket_id: socketId, signin: true, ...pusher.authenticateUser(socketId, { id: "user-9", name: "Nine" }) });
const body = JSON.stringify({ time_ms: 1, events: [{ name: "channel_occupied", channel: "a" }] });
out.webhook = { body };
// The library's webhook check, run on a body signed as roostd signs it
// (hex HMAC-SHA256 of the body with the secret): recorded as a known pair.
const crypto = await import("node:crypto");
out.webhook.signature = crypto.createHmac("sha256", app.secret).update(body).digest("hex");
out.webhook.library_accepts = pusher.webhook({ headers: { "content-type": "application/json", "x-pusher-key": app.key, "x-pusher-signature": out.webhook.signature }, rawBody: body }).isValid();

process.stdout.write(JSON.stringify(out, null, 2) + "\n");
