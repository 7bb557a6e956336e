//! Every knob and limit of the server, in one validated `Config`.
//!
//! Flags and the TOML file share one code path: a TOML value is turned into
//! the text a flag would carry and applied with the same `set`, so a setting
//! is parsed, checked and explained in exactly one place, and "flags win over
//! the file" is just the order of application. Each limit says what it
//! protects: on a 512 MiB Raspberry Pi every buffer and queue must be bounded.
//!
//! This module reads no environment and opens no socket; `main` gives it the
//! argument list and the file text.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What to do when the store cannot be opened because it is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCorrupt {
    /// Move the damaged files aside and start an empty store with a new epoch.
    Fresh,
    /// Exit with status 2 and leave the files as they are.
    Refuse,
}

/// A per-pattern retention override (`[[retention]]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionRule {
    /// Channel pattern, as in tokens: exact name, `prefix*`, or `*`.
    pub pattern: String,
    pub messages: u64,
    pub age: Duration,
}

/// A key of the key ring (`[[keys]]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    pub id: String,
    pub secret_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen. Loopback by default: exposing a server on the LAN is
    /// a decision the operator makes with `--listen 0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// The host name given to `--listen` when it was not an IP address
    /// (`localhost:8081`). `main` resolves it into `listen` (this module does
    /// no I/O); printed URLs show it as typed.
    pub listen_name: Option<String>,
    /// The LMDB environment and the generated secret live here.
    pub data: PathBuf,
    pub secret_file: Option<PathBuf>,
    pub keys: Vec<KeyFile>,
    /// Browser origins allowed to open a WebSocket. Empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// Host names requests may address (the `Host` header, port ignored).
    /// Empty: any. Set, it defeats DNS rebinding: a page whose name was
    /// re-pointed at the Pi still sends its own name as `Host`.
    pub allowed_hosts: Vec<String>,
    /// Total connections (WebSocket and HTTP). `None`: derived from
    /// `RLIMIT_NOFILE` by `main`, leaving headroom for LMDB and logs.
    pub max_connections: Option<usize>,
    /// Connections from one address: a single misbehaving device cannot
    /// take every slot.
    pub max_connections_per_ip: usize,
    /// Largest WebSocket message or HTTP body. Also tungstenite's frame and
    /// message limit, so an oversize frame is refused before it is buffered.
    pub max_message_bytes: usize,
    /// Largest HTTP request head (431 beyond it).
    pub max_header_bytes: usize,
    /// Time to receive a complete request head (slowloris guard).
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub publish_hook: Option<String>,
    pub publish_hook_timeout: Duration,
    pub retention_messages: u64,
    pub retention_age: Duration,
    pub retention: Vec<RetentionRule>,
    pub dedupe_window: Duration,
    /// Publishes per second per connection, burst twice that; 0 = no limit.
    pub publish_rate: u32,
    pub max_subscriptions: usize,
    pub max_fragments: usize,
    /// Queued replies and deliveries per connection; past it the connection
    /// is closed with 1013 and resumes with `since`, losing nothing.
    pub max_send_buffer_bytes: usize,
    /// Output queued by all connections together past which replays wait
    /// and connections with output of their own queued are not read, so
    /// many clients that never read cannot add up to the machine's memory.
    pub max_output_bytes: usize,
    /// Half-received messages of all connections together; past it the
    /// connection adding to them is closed 1013 (it sends the message again).
    pub max_input_bytes: usize,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub on_corrupt: OnCorrupt,
    pub demo: bool,
    /// LMDB map size: the most the store may ever occupy.
    pub max_store_bytes: u64,
    /// Channels in the store. A channel's record outlives its messages (its
    /// seqs must never repeat), so without a bound a token with a prefix
    /// grant could fill the disk with channels; a publish that would create
    /// one more is refused with `too_many_channels`.
    pub max_channels: u64,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Conformance testing only: echo every message back unchanged.
    pub echo: bool,
    /// Once listening, `main` writes the bound address here (atomically), so
    /// scripts and tests started with port 0 need not scrape the log.
    pub ready_file: Option<PathBuf>,
    /// Channel patterns whose subscribers are members (spec §7); `presence-*`
    /// is always one, whatever is configured.
    pub presence: Vec<String>,
    /// A member who leaves and comes back within it is never reported gone.
    pub presence_grace: Duration,
    /// The grace for members stored before a start (clients' reconnect backoff).
    pub presence_restart_grace: Duration,
    pub max_presence_members: usize,
    /// Compacted channels (spec §8): retention keeps the latest message per key.
    pub compact: Vec<String>,
    /// Live keys per compacted channel.
    pub max_keys: u64,
    /// Where lifecycle events are POSTed (spec §9).
    pub webhook: Option<String>,
    /// The event names sent; empty means all of [`WEBHOOK_EVENTS`].
    pub webhook_events: Vec<String>,
    pub webhook_retry_for: Duration,
    pub webhook_backoff_min: Duration,
    pub webhook_max_pending: u64,
    /// The Pusher app (pusher.md §1): with no id and key, the Pusher
    /// endpoints answer 404. Both or neither (`validate`).
    pub pusher_app_id: Option<String>,
    pub pusher_key: Option<String>,
    /// Public channels Pusher clients may join without a signature. None by
    /// default: the key ships in every page, so nothing is public unless
    /// the operator says so.
    pub pusher_public: Vec<String>,
    /// The app secret; `None`: the default HMAC key, so the main
    /// application shares one secret with roostd.
    pub pusher_secret_file: Option<PathBuf>,
    /// NATS servers of the cluster (`--cluster`, cluster.md). Empty: a single
    /// node, and nothing of the cluster code runs.
    pub cluster_urls: Vec<NatsUrl>,
    /// The cluster's name: the stream `ROOST_<name>` and the subjects
    /// `roost.<name>.…`, so one NATS can carry several clusters.
    pub cluster_name: Option<String>,
    /// JetStream replicas of the stream: 1 (one NATS server) or 3.
    pub cluster_replicas: u8,
    /// A file with `user:password` or a token for NATS's CONNECT.
    pub cluster_credentials: Option<PathBuf>,
}

/// One `nats://host:port` of `--cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsUrl {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats://{}:{}", self.host, self.port)
    }
}

/// Every webhook event name (spec §9; `client_event` and `cache_miss` come
/// from the Pusher protocol).
pub const WEBHOOK_EVENTS: &[&str] =
    &["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"];

/// A configuration problem, worded so the user knows what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The default store limit fits the address space: a 32-bit process cannot
/// map 1 GiB next to its heap and stacks.
pub const DEFAULT_MAX_STORE_BYTES: u64 = if cfg!(target_pointer_width = "64") { 1 << 30 } else { 256 << 20 };

/// One entry of the settings table, shared by `--help` and the docs.
pub struct Setting {
    pub key: &'static str,
    pub value: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every setting a flag (`--key-with-dashes`) or file key (`key_with_underscores`) can carry.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        value: "ADDR",
        default: "127.0.0.1:8080",
        help: "where to listen (0.0.0.0:8080 for the LAN)",
    },
    Setting { key: "data", value: "DIR", default: "./roostd-data", help: "the store and the generated secret" },
    Setting {
        key: "secret-file",
        value: "FILE",
        default: "-",
        help: "the HMAC secret (else $ROOSTD_SECRET, else <data>/secret)",
    },
    Setting {
        key: "allowed-origin",
        value: "ORIGIN",
        default: "same origin",
        help: "browser origin allowed to connect (repeatable)",
    },
    Setting {
        key: "allowed-host",
        value: "NAME",
        default: "any",
        help: "host name requests must address, against DNS rebinding (repeatable)",
    },
    Setting {
        key: "max-connections",
        value: "N",
        default: "from RLIMIT_NOFILE",
        help: "total WebSocket + HTTP connections",
    },
    Setting { key: "max-connections-per-ip", value: "N", default: "1024", help: "connections per client address" },
    Setting { key: "max-message-bytes", value: "N", default: "65536", help: "largest WebSocket message or HTTP body" },
    Setting { key: "max-header-bytes", value: "N", default: "8192", help: "largest HTTP request head" },
    Setting { key: "handshake-timeout", value: "D", default: "10s", help: "time to send a complete request head" },
    Setting { key: "ping-interval", value: "D", default: "30s", help: "ping a quiet peer this often" },
    Setting {
        key: "pong-timeout",
        value: "D",
        default: "20s",
        help: "close a peer that does not answer a ping in time",
    },
    Setting {
        key: "publish-hook",
        value: "URL",
        default: "-",
        help: "main application URL that approves client publishes",
    },
    Setting { key: "publish-hook-timeout", value: "D", default: "2s", help: "how long the publish hook may take" },
    Setting { key: "retention-messages", value: "N", default: "10000", help: "messages kept per channel" },
    Setting { key: "retention-age", value: "D", default: "7d", help: "age after which messages are trimmed" },
    Setting { key: "dedupe-window", value: "D", default: "10m", help: "how long a (sub, id) is remembered" },
    Setting {
        key: "publish-rate",
        value: "N",
        default: "1000",
        help: "publishes per second per connection, burst 2x; 0 = no limit",
    },
    Setting { key: "max-subscriptions", value: "N", default: "256", help: "subscriptions per connection" },
    Setting { key: "max-fragments", value: "N", default: "1024", help: "frames per fragmented message" },
    Setting {
        key: "max-send-buffer-bytes",
        value: "N",
        default: "1048576",
        help: "queued output per connection; past it: close 1013",
    },
    Setting {
        key: "max-output-bytes",
        value: "N",
        default: "67108864",
        help: "queued output of all connections; past it replays and clients with output waiting pause",
    },
    Setting {
        key: "max-input-bytes",
        value: "N",
        default: "67108864",
        help: "half-received messages of all connections; past it the connection adding to them: close 1013",
    },
    Setting { key: "audience", value: "AUD", default: "-", help: "token aud to require" },
    Setting { key: "leeway", value: "D", default: "30s", help: "clock tolerance for exp/nbf/iat" },
    Setting { key: "on-corrupt", value: "fresh|refuse", default: "fresh", help: "what to do with an unreadable store" },
    Setting { key: "no-demo", value: "", default: "demo on", help: "do not serve the demo page and /roost.js" },
    Setting { key: "max-store-bytes", value: "N", default: "1 GiB (256 MiB on 32-bit)", help: "LMDB map limit" },
    Setting {
        key: "max-channels",
        value: "N",
        default: "100000",
        help: "channels in the store; past it a new channel is refused (too_many_channels)",
    },
    Setting { key: "tls-cert", value: "FILE", default: "-", help: "PEM certificate: serve https:// and wss://" },
    Setting { key: "tls-key", value: "FILE", default: "-", help: "PEM private key for --tls-cert" },
    Setting { key: "echo", value: "", default: "off", help: "conformance testing only: echo every message back" },
    Setting {
        key: "presence",
        value: "PATTERN",
        default: "presence-*",
        help: "channels whose subscribers are members (repeatable; presence-* always is one)",
    },
    Setting {
        key: "presence-grace",
        value: "D",
        default: "3s",
        help: "a member who comes back within it is never reported gone",
    },
    Setting {
        key: "presence-restart-grace",
        value: "D",
        default: "30s",
        help: "the same, for members stored before a start",
    },
    Setting { key: "max-presence-members", value: "N", default: "1000", help: "members per presence channel" },
    Setting {
        key: "compact",
        value: "PATTERN",
        default: "none",
        help: "compacted channels: keep the latest message per key (repeatable)",
    },
    Setting { key: "max-keys", value: "N", default: "10000", help: "live keys per compacted channel" },
    Setting { key: "webhook", value: "URL", default: "-", help: "POST lifecycle events here (http:// or https://)" },
    Setting { key: "webhook-events", value: "LIST", default: "all", help: "comma-separated event names to send" },
    Setting { key: "webhook-retry-for", value: "D", default: "24h", help: "how long a failed delivery is retried" },
    Setting { key: "webhook-backoff-min", value: "D", default: "1s", help: "first retry delay, doubling to 1 min" },
    Setting {
        key: "webhook-max-pending",
        value: "N",
        default: "100000",
        help: "events waiting; past it the oldest are dropped",
    },
    Setting { key: "pusher-app-id", value: "ID", default: "-", help: "serve the Pusher protocol for this app id" },
    Setting { key: "pusher-key", value: "KEY", default: "-", help: "the Pusher app key (with --pusher-app-id)" },
    Setting {
        key: "pusher-public",
        value: "PATTERN",
        default: "none",
        help: "Pusher channels open without a signature (repeatable)",
    },
    Setting { key: "pusher-secret-file", value: "FILE", default: "the default key", help: "the Pusher app secret" },
    Setting {
        key: "cluster",
        value: "URL,...",
        default: "-",
        help: "NATS JetStream servers (nats://host:port): run as one node of a cluster",
    },
    Setting { key: "cluster-name", value: "NAME", default: "-", help: "the cluster's name (A-Z a-z 0-9 _ -)" },
    Setting { key: "cluster-replicas", value: "1|3", default: "1", help: "JetStream replicas of the cluster's stream" },
    Setting {
        key: "cluster-credentials",
        value: "FILE",
        default: "-",
        help: "user:password or a token for the NATS servers",
    },
    Setting {
        key: "ready-file",
        value: "FILE",
        default: "-",
        help: "once listening, write the bound address (ip:port and a newline) here",
    },
];

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_name: None,
            data: PathBuf::from("./roostd-data"),
            secret_file: None,
            keys: Vec::new(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: None,
            max_connections_per_ip: 1024,
            max_message_bytes: 64 * 1024,
            max_header_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(20),
            publish_hook: None,
            publish_hook_timeout: Duration::from_secs(2),
            retention_messages: 10_000,
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention: Vec::new(),
            dedupe_window: Duration::from_secs(600),
            publish_rate: 1000,
            max_subscriptions: 256,
            max_fragments: 1024,
            max_send_buffer_bytes: 1 << 20,
            max_output_bytes: 64 << 20,
            max_input_bytes: 64 << 20,
            audience: None,
            leeway: Duration::from_secs(30),
            on_corrupt: OnCorrupt::Fresh,
            demo: true,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
            max_channels: 100_000,
            tls_cert: None,
            tls_key: None,
            echo: false,
            ready_file: None,
            presence: Vec::new(),
            presence_grace: Duration::from_secs(3),
            presence_restart_grace: Duration::from_secs(30),
            max_presence_members: 1000,
            compact: Vec::new(),
            max_keys: 10_000,
            webhook: None,
            webhook_events: Vec::new(),
            webhook_retry_for: Duration::from_secs(24 * 3600),
            webhook_backoff_min: Duration::from_secs(1),
            webhook_max_pending: 100_000,
            pusher_app_id: None,
            pusher_key: None,
            pusher_public: Vec::new(),
            pusher_secret_file: None,
            cluster_urls: Vec::new(),
            cluster_name: None,
            cluster_replicas: 1,
            cluster_credentials: None,
        }
    }
}

impl Config {
    /// Applies one setting given as text, the way a flag carries it.
    /// `key` uses dashes (`max-message-bytes`); file keys are translated first.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = value;
        match key {
            "listen" => {
                (self.listen, self.listen_name) = match v.parse() {
                    Ok(addr) => (addr, None),
                    Err(_) => {
                        let (host, port) = host_port(v)?;
                        (SocketAddr::from(([127, 0, 0, 1], port)), Some(host.to_string()))
                    }
                }
            }
            "data" => self.data = PathBuf::from(nonempty(key, v)?),
            "secret-file" => self.secret_file = Some(PathBuf::from(nonempty(key, v)?)),
            "allowed-origin" => self.allowed_origins.push(nonempty(key, v)?.trim_end_matches('/').to_string()),
            "allowed-host" => self.allowed_hosts.push(nonempty(key, v)?.to_ascii_lowercase()),
            "max-connections" => self.max_connections = Some(positive(key, v)?),
            "max-connections-per-ip" => self.max_connections_per_ip = positive(key, v)?,
            "max-message-bytes" => self.max_message_bytes = positive(key, v)?,
            "max-header-bytes" => self.max_header_bytes = positive(key, v)?,
            "handshake-timeout" => self.handshake_timeout = duration(key, v)?,
            "ping-interval" => self.ping_interval = duration(key, v)?,
            "pong-timeout" => self.pong_timeout = duration(key, v)?,
            "publish-hook" => self.publish_hook = Some(nonempty(key, v)?.to_string()),
            "publish-hook-timeout" => self.publish_hook_timeout = duration(key, v)?,
            "retention-messages" => self.retention_messages = positive(key, v)? as u64,
            "retention-age" => self.retention_age = duration(key, v)?,
            "dedupe-window" => self.dedupe_window = duration(key, v)?,
            "publish-rate" => self.publish_rate = number(key, v)?,
            "max-subscriptions" => self.max_subscriptions = positive(key, v)?,
            "max-fragments" => self.max_fragments = positive(key, v)?,
            "max-send-buffer-bytes" => self.max_send_buffer_bytes = positive(key, v)?,
            "max-output-bytes" => self.max_output_bytes = positive(key, v)?,
            "max-input-bytes" => self.max_input_bytes = positive(key, v)?,
            "audience" => self.audience = Some(nonempty(key, v)?.to_string()),
            "leeway" => self.leeway = duration(key, v)?,
            "on-corrupt" => {
                self.on_corrupt = match v {
                    "fresh" => OnCorrupt::Fresh,
                    "refuse" => OnCorrupt::Refuse,
                    _ => return err(format!("--on-corrupt takes `fresh` or `refuse`, not {v:?}")),
                }
            }
            "no-demo" => self.demo = !boolean(key, v)?,
            "max-store-bytes" => self.max_store_bytes = positive(key, v)? as u64,
            "max-channels" => self.max_channels = positive(key, v)? as u64,
            "tls-cert" => self.tls_cert = Some(PathBuf::from(nonempty(key, v)?)),
            "tls-key" => self.tls_key = Some(PathBuf::from(nonempty(key, v)?)),
            "echo" => self.echo = boolean(key, v)?,
            "ready-file" => self.ready_file = Some(PathBuf::from(nonempty(key, v)?)),
            _ => return self.set_events(key, v),
        }
        Ok(())
    }

    /// The settings of presence, state, webhooks and the Pusher app (spec
    /// §7-§9, pusher.md), and the answer to an unknown one.
    fn set_events(&mut self, key: &str, v: &str) -> Result<(), ConfigError> {
        match key {
            "presence" => self.presence.push(pattern(key, v)?),
            "presence-grace" => self.presence_grace = duration(key, v)?,
            "presence-restart-grace" => self.presence_restart_grace = duration(key, v)?,
            "max-presence-members" => self.max_presence_members = positive(key, v)?,
            "compact" => self.compact.push(pattern(key, v)?),
            "max-keys" => self.max_keys = positive(key, v)? as u64,
            "webhook" => {
                let url = nonempty(key, v)?;
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < "http://x".len() {
                    return err(format!("--webhook takes an http:// or https:// URL, not {url:?}"));
                }
                self.webhook = Some(url.to_string());
            }
            "webhook-events" => {
                self.webhook_events.clear();
                for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !WEBHOOK_EVENTS.contains(&name) {
                        return err(format!(
                            "--webhook-events: unknown event {name:?}; the events are {}",
                            WEBHOOK_EVENTS.join(", ")
                        ));
                    }
                    self.webhook_events.push(name.to_string());
                }
            }
            "webhook-retry-for" => self.webhook_retry_for = duration(key, v)?,
            "webhook-backoff-min" => self.webhook_backoff_min = duration(key, v)?,
            "webhook-max-pending" => self.webhook_max_pending = positive(key, v)? as u64,
            "pusher-app-id" => self.pusher_app_id = Some(pusher_name(key, v)?),
            "pusher-key" => self.pusher_key = Some(pusher_name(key, v)?),
            "pusher-public" => {
                let p = pattern(key, v)?;
                if ["private-", "presence-"].iter().any(|pre| p.starts_with(pre)) {
                    return err(format!(
                        "--pusher-public {p:?}: private- and presence- channels always need a signature; \
                         name public channels (no prefix) here"
                    ));
                }
                self.pusher_public.push(p);
            }
            "pusher-secret-file" => self.pusher_secret_file = Some(PathBuf::from(nonempty(key, v)?)),
            "cluster" => {
                self.cluster_urls.clear();
                for url in v.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    self.cluster_urls.push(nats_url(url)?);
                }
                if self.cluster_urls.is_empty() {
                    return err("--cluster takes one or more nats://host:port, separated by commas");
                }
            }
            "cluster-name" => {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return err(format!(
                        "--cluster-name takes 1 to 64 letters, digits, `_` or `-` (it names NATS subjects), not {v:?}"
                    ));
                }
                self.cluster_name = Some(v.to_string());
            }
            "cluster-replicas" => {
                self.cluster_replicas = match v.trim() {
                    "1" => 1,
                    "3" => 3,
                    _ => return err(format!("--cluster-replicas takes 1 or 3, not {v:?}")),
                }
            }
            "cluster-credentials" => self.cluster_credentials = Some(PathBuf::from(nonempty(key, v)?)),
            _ => {
                return err(format!(
                    "unknown setting `{key}`{}; `roostd serve --help` lists them all",
                    did_you_mean(key, "--", &[])
                ))
            }
        }
        Ok(())
    }

    /// True for settings that are switches (a flag without a value).
    pub fn is_switch(key: &str) -> bool {
        matches!(key, "no-demo" | "echo")
    }

    /// Applies a TOML config file. Unknown keys are errors: a typo must not
    /// silently leave a limit at its default.
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().or_else(|e| err(format!("{origin}: not valid TOML: {e}")))?;
        for (name, value) in &table {
            let key = name.replace('_', "-");
            if !FILE_ONLY.contains(&key.as_str())
                && !matches!(key.as_str(), "allowed-origins" | "allowed-hosts")
                && !SETTINGS.iter().any(|s| s.key == key)
            {
                // Echoed as typed, with the nearest key in file spelling.
                let hint = did_you_mean(&key, "", FILE_ONLY).replace('-', "_");
                return err(format!("{origin}: unknown setting `{name}`{hint}; `roostd serve --help` lists them all"));
            }
            match (key.as_str(), value) {
                ("pusher", toml::Value::Table(t)) => self.apply_pusher_table(t, origin)?,
                ("cluster", toml::Value::Table(t)) => self.apply_cluster_table(t, origin)?,
                ("pusher", _) => {
                    return err(format!(
                        "{origin}: write the Pusher app as a table: `[pusher]` then app_id, key, public, secret_file"
                    ))
                }
                ("keys" | "retention", toml::Value::Table(_)) => {
                    return err(format!(
                        "{origin}: write `[[{key}]]` (two brackets, once before each entry), not `[{key}]`: \
                         it is a list of tables"
                    ));
                }
                ("keys", toml::Value::Array(items)) => {
                    for item in items {
                        self.keys.push(key_table(item, origin)?);
                    }
                }
                ("retention", toml::Value::Array(items)) => {
                    for item in items {
                        self.retention.push(retention_table(item, self, origin)?);
                    }
                }
                (
                    "allowed-origin" | "allowed-origins" | "allowed-host" | "allowed-hosts" | "presence" | "compact"
                    | "pusher-public",
                    toml::Value::Array(items),
                ) => {
                    let k = key.strip_suffix('s').filter(|k| k.starts_with("allowed-")).unwrap_or(&key);
                    for item in items {
                        let text = scalar(item)
                            .ok_or_else(|| ConfigError(format!("{origin}: `{name}` takes a list of strings")))?;
                        self.set(k, &text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
                    }
                }
                (k, v) => {
                    let text = scalar(v).ok_or_else(|| {
                        ConfigError(format!("{origin}: `{name}` must be a string, number or boolean"))
                    })?;
                    let k = if k == "allowed-origins" { "allowed-origin" } else { k };
                    self.set(k, &text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
                }
            }
        }
        Ok(())
    }

    /// `[pusher]`: `app_id`, `key`, `public` (a pattern or a list), `secret_file`.
    fn apply_pusher_table(&mut self, t: &toml::Table, origin: &str) -> Result<(), ConfigError> {
        for (k, v) in t {
            if !["app_id", "key", "public", "secret_file"].contains(&k.as_str()) {
                return err(format!("{origin}: [pusher] has no setting `{k}` (app_id, key, public, secret_file)"));
            }
            let items = match v {
                toml::Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for item in items {
                let text =
                    scalar(item).ok_or_else(|| ConfigError(format!("{origin}: [pusher] `{k}` takes a string")))?;
                self.set(&format!("pusher-{}", k.replace('_', "-")), &text)
                    .map_err(|e| ConfigError(format!("{origin}: [pusher] {e}")))?;
            }
        }
        Ok(())
    }

    /// `[cluster]`: `urls` (a URL or a list), `name`, `replicas`, `credentials`.
    fn apply_cluster_table(&mut self, t: &toml::Table, origin: &str) -> Result<(), ConfigError> {
        for (k, v) in t {
            let key = match k.as_str() {
                "urls" => "cluster",
                "name" => "cluster-name",
                "replicas" => "cluster-replicas",
                "credentials" => "cluster-credentials",
                _ => {
                    return err(format!("{origin}: [cluster] has no setting `{k}` (urls, name, replicas, credentials)"))
                }
            };
            let text = match v {
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| scalar(i).filter(|_| key == "cluster"))
                    .collect::<Option<Vec<_>>>()
                    .map(|urls| urls.join(",")),
                one => scalar(one),
            };
            let text = text.ok_or_else(|| ConfigError(format!("{origin}: [cluster] `{k}` takes a string")))?;
            self.set(key, &text).map_err(|e| ConfigError(format!("{origin}: [cluster] {e}")))?;
        }
        Ok(())
    }

    /// Checks relations between settings once everything is applied.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.cluster_urls.is_empty()
            && (self.cluster_name.is_some() || self.cluster_credentials.is_some() || self.cluster_replicas != 1)
        {
            return err("--cluster-name, --cluster-replicas and --cluster-credentials need --cluster nats://host:port");
        }
        if !self.cluster_urls.is_empty() && self.cluster_name.is_none() {
            return err("--cluster needs --cluster-name NAME: every node of one cluster gives the same name");
        }
        if self.pusher_app_id.is_some() != self.pusher_key.is_some() {
            return err("--pusher-app-id and --pusher-key go together; give both (the Pusher app) or neither");
        }
        if self.pusher_app_id.is_none() && (!self.pusher_public.is_empty() || self.pusher_secret_file.is_some()) {
            return err(
                "--pusher-public and --pusher-secret-file need a Pusher app: add --pusher-app-id and --pusher-key",
            );
        }
        if self.max_send_buffer_bytes < 2 * self.max_message_bytes {
            return err(format!(
                "max-send-buffer-bytes ({}) must be at least twice max-message-bytes ({}); raise it or lower the message limit",
                self.max_send_buffer_bytes, self.max_message_bytes
            ));
        }
        if self.max_input_bytes < 2 * self.max_message_bytes {
            return err(format!(
                "max-input-bytes ({}) must be at least twice max-message-bytes ({}); raise it or lower the message limit",
                self.max_input_bytes, self.max_message_bytes
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return err("--tls-cert and --tls-key go together; give both or neither");
        }
        if self.max_store_bytes > usize::MAX as u64 / 2 {
            return err(format!(
                "max-store-bytes {} does not fit this machine's address space; use at most {}",
                self.max_store_bytes,
                usize::MAX / 2
            ));
        }
        Ok(())
    }

    /// Whether `channel` is a presence channel (spec §7).
    pub fn is_presence(&self, channel: &str) -> bool {
        channel.starts_with("presence-") || self.presence.iter().any(|p| crate::channel::matches(p, channel))
    }

    /// Whether `channel` is compacted (spec §8).
    pub fn is_compacted(&self, channel: &str) -> bool {
        self.compact.iter().any(|p| crate::channel::matches(p, channel))
    }

    /// Whether webhook event `name` is sent (all are, unless narrowed).
    pub fn webhook_sends(&self, name: &str) -> bool {
        self.webhook.is_some() && (self.webhook_events.is_empty() || self.webhook_events.iter().any(|e| e == name))
    }

    /// Retention for one channel: the first matching `[[retention]]` rule, else the defaults.
    pub fn retention_for(&self, channel: &str) -> (u64, Duration) {
        for rule in &self.retention {
            if crate::channel::matches(&rule.pattern, channel) {
                return (rule.messages, rule.age);
            }
        }
        (self.retention_messages, self.retention_age)
    }

    /// The retention settings as one text: equal texts mean equal rules
    /// for every channel (the store rebuilds its retention index when it changes).
    pub fn retention_rules(&self) -> String {
        let rules: Vec<String> =
            self.retention.iter().map(|r| format!("{} {} {}", r.pattern, r.messages, r.age.as_millis())).collect();
        format!("{} {} [{}]", self.retention_messages, self.retention_age.as_millis(), rules.join(", "))
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn key_table(item: &toml::Value, origin: &str) -> Result<KeyFile, ConfigError> {
    let t = item
        .as_table()
        .ok_or_else(|| ConfigError(format!("{origin}: [[keys]] entries are tables with id and secret_file")))?;
    for k in t.keys() {
        if k != "id" && k != "secret_file" {
            return err(format!("{origin}: [[keys]] has no setting `{k}` (only id and secret_file)"));
        }
    }
    let id = t.get("id").and_then(|v| v.as_str());
    let file = t.get("secret_file").and_then(|v| v.as_str());
    match (id, file) {
        (Some(id), Some(file)) if !id.is_empty() && !file.is_empty() => {
            Ok(KeyFile { id: id.to_string(), secret_file: PathBuf::from(file) })
        }
        _ => err(format!("{origin}: each [[keys]] needs id = \"...\" and secret_file = \"...\"")),
    }
}

fn retention_table(item: &toml::Value, base: &Config, origin: &str) -> Result<RetentionRule, ConfigError> {
    let t = item.as_table().ok_or_else(|| ConfigError(format!("{origin}: [[retention]] entries are tables")))?;
    let pattern = t
        .get("pattern")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ConfigError(format!("{origin}: each [[retention]] needs pattern = \"...\"")))?;
    let mut rule =
        RetentionRule { pattern: pattern.to_string(), messages: base.retention_messages, age: base.retention_age };
    for (k, v) in t {
        let text = scalar(v).unwrap_or_default();
        match k.as_str() {
            "pattern" => {}
            "messages" => rule.messages = positive("retention.messages", &text)? as u64,
            "age" => rule.age = duration("retention.age", &text)?,
            _ => return err(format!("{origin}: [[retention]] has no setting `{k}` (pattern, messages, age)")),
        }
    }
    Ok(rule)
}

/// Settings that exist only in the config file, as lists of tables.
pub const FILE_ONLY: &[&str] = &["retention", "keys", "pusher"];

/// Names people reach for that roostd spells differently.
const ALIASES: &[(&str, &str)] = &[
    ("port", "listen"),
    ("host", "listen"),
    ("bind", "listen"),
    ("addr", "listen"),
    ("address", "listen"),
    ("data-dir", "data"),
    ("dir", "data"),
    ("secret", "secret-file"),
    ("cert", "tls-cert"),
    ("key", "tls-key"),
    ("origin", "allowed-origin"),
];

/// ` (did you mean `--listen`?)` for the setting nearest to `typed` (also
/// among `extra` names), or "" when nothing is close. `prefix` is how the
/// names are written: `--` for flags, "" for file keys.
pub fn did_you_mean(typed: &str, prefix: &str, extra: &[&str]) -> String {
    let typed = typed.to_ascii_lowercase().replace('_', "-");
    let alias = ALIASES.iter().find(|(a, _)| *a == typed).map(|(_, to)| *to);
    let candidates = SETTINGS.iter().map(|s| s.key).chain(extra.iter().copied()).filter(|c| !c.is_empty());
    let near = candidates
        .map(|c| (edit_distance(&typed, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < typed.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    match near.or(alias) {
        Some(name) => format!(" (did you mean `{prefix}{name}`?)"),
        None => String::new(),
    }
}

/// Levenshtein distance: typos are one or two letters off.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Splits `name:port` for a `--listen` that is not an IP address.
fn host_port(v: &str) -> Result<(&str, u16), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "--listen {v:?} is not an address; write it like 127.0.0.1:8080, [::1]:8080 or localhost:8080"
        ))
    };
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Err(bad());
    }
    Ok((host, port))
}

/// A channel pattern: a valid channel name, optionally ending in `*`, or `*`.
fn pattern(key: &str, v: &str) -> Result<String, ConfigError> {
    let name = v.strip_suffix('*').unwrap_or(v);
    if v != "*" && !crate::channel::valid_name(name) {
        return err(format!("--{key} takes a channel name or a prefix ending in `*` (like `room:*`), not {v:?}"));
    }
    Ok(v.to_string())
}

/// `nats://host:port` (the port defaults to 4222). TLS and credentials in
/// the URL are refused rather than ignored: a URL must mean what it says.
fn nats_url(v: &str) -> Result<NatsUrl, ConfigError> {
    let bad = |why: &str| ConfigError(format!("--cluster {v:?}: {why}; write it like nats://127.0.0.1:4222"));
    let rest = v.strip_prefix("nats://").ok_or_else(|| bad("only nats:// URLs are supported"))?;
    if rest.contains('@') {
        return Err(bad("put credentials in --cluster-credentials, not in the URL"));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?)
        }
        _ => (rest, 4222),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok =
        !host.is_empty() && host.len() <= 253 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !ok || port == 0 {
        return Err(bad("not a host and port"));
    }
    Ok(NatsUrl { host: host.to_string(), port })
}

/// A Pusher app id or key: 1 to 64 of `A-Z a-z 0-9 _ - .` (no `:`, which
/// separates the key from the signature in `auth`).
fn pusher_name(key: &str, v: &str) -> Result<String, ConfigError> {
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !ok {
        return err(format!("--{key} takes 1 to 64 letters, digits, `_`, `-` or `.`, not {v:?}"));
    }
    Ok(v.to_string())
}

fn nonempty<'a>(key: &str, v: &'a str) -> Result<&'a str, ConfigError> {
    if v.is_empty() {
        return err(format!("--{key} needs a value"));
    }
    Ok(v)
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim().replace('_', "").parse().or_else(|_| err(format!("--{key} takes a whole number, not {v:?}")))
}

fn positive(key: &str, v: &str) -> Result<usize, ConfigError> {
    let n: usize = number(key, v)?;
    if n == 0 {
        return err(format!("--{key} must be at least 1"));
    }
    Ok(n)
}

fn boolean(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "" => Ok(true),
        "false" => Ok(false),
        _ => err(format!("--{key} is a switch: true or false, not {v:?}")),
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => return err(format!("--{key} takes a duration like 500ms, 10s, 5m or 7d, not {v:?}")),
    };
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return err(format!("--{key}: unknown unit {unit:?} in {v:?}; use ms, s, m, h or d")),
    };
    match ms {
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => err(format!("--{key}: {v:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_compact_and_webhook_settings_are_checked() {
        let mut c = Config::default();
        assert!(c.is_presence("presence-room:1"));
        assert!(!c.is_presence("room:1"));
        c.set("presence", "room:*").unwrap();
        assert!(c.is_presence("room:1"));
        assert!(c.set("presence", "bad name*").unwrap_err().0.contains("prefix ending in `*`"));
        assert!(!c.is_compacted("sensors:1"));
        c.apply_toml("compact = [\"sensors:*\", \"kv\"]\nmax_keys = 5", "t.toml").unwrap();
        let mut p = Config::default();
        p.apply_toml("pusher_app_id = \"a\"\npusher_key = \"k\"\npusher_public = [\"news\", \"feed:*\"]", "t.toml")
            .unwrap();
        assert_eq!(
            p.pusher_public,
            vec!["news".to_string(), "feed:*".to_string()],
            "a list, as the shipped file shows"
        );
        assert!(c.is_compacted("kv"));
        assert!(c.is_compacted("sensors:1"));
        assert_eq!(c.max_keys, 5);
        assert!(!c.webhook_sends("member_added"), "no URL, nothing is sent");
        assert!(c.set("webhook", "ftp://app/hooks").unwrap_err().0.contains("http:// or https://"));
        c.set("webhook", "http://127.0.0.1:9/hooks").unwrap();
        assert!(c.webhook_sends("member_added"));
        c.set("webhook-events", "member_added, member_removed").unwrap();
        assert!(c.webhook_sends("member_removed"));
        assert!(!c.webhook_sends("channel_vacated"));
        assert!(c.set("webhook-events", "member_added,memberremoved").unwrap_err().0.contains("unknown event"));
        c.set("webhook-backoff-min", "50ms").unwrap();
        assert_eq!(c.webhook_backoff_min, Duration::from_millis(50));
    }

    #[test]
    fn the_pusher_app_comes_from_flags_or_a_pusher_table() {
        let mut c = Config::default();
        c.apply_toml(
            "[pusher]\napp_id = \"4242\"\nkey = \"app-key\"\npublic = [\"news\", \"public-*\"]\nsecret_file = \"/etc/p\"",
            "t.toml",
        )
        .unwrap();
        assert_eq!((c.pusher_app_id.as_deref(), c.pusher_key.as_deref()), (Some("4242"), Some("app-key")));
        assert_eq!(c.pusher_public, ["news", "public-*"]);
        assert_eq!(c.pusher_secret_file, Some(PathBuf::from("/etc/p")));
        c.set("pusher-public", "lobby").unwrap();
        assert_eq!(c.pusher_public.len(), 3, "--pusher-public is repeatable");
        c.validate().unwrap();

        let mut c = Config::default();
        c.apply_toml("[pusher]\napp_id = 1\nkey = \"k\"\npublic = \"news\"", "t.toml").unwrap();
        assert_eq!((c.pusher_app_id.as_deref(), c.pusher_public.as_slice()), (Some("1"), &["news".to_string()][..]));
    }

    #[test]
    fn bad_pusher_settings_say_what_to_do() {
        let mut c = Config::default();
        assert!(c.set("pusher-key", "a:b").unwrap_err().0.contains("letters, digits"));
        assert!(c.set("pusher-app-id", "").is_err());
        assert!(c.set("pusher-public", "private-*").unwrap_err().0.contains("always need a signature"));
        assert!(c.set("pusher-public", "a b").unwrap_err().0.contains("prefix ending in `*`"));
        let e = c.apply_toml("[pusher]\nsecret = \"x\"", "t.toml").unwrap_err();
        assert!(e.0.contains("[pusher] has no setting `secret`"), "{e}");
        let e = c.apply_toml("pusher = \"x\"", "t.toml").unwrap_err();
        assert!(e.0.contains("`[pusher]`"), "{e}");
        c.set("pusher-app-id", "1").unwrap();
        assert!(c.validate().unwrap_err().0.contains("go together"));
        let mut c = Config::default();
        c.set("pusher-public", "news").unwrap();
        assert!(c.validate().unwrap_err().0.contains("need a Pusher app"));
    }

    #[test]
    fn the_cluster_comes_from_flags_or_a_cluster_table() {
        let mut c = Config::default();
        c.validate().unwrap();
        assert!(c.cluster_urls.is_empty(), "no cluster unless asked");
        c.set("cluster", "nats://127.0.0.1:4222, nats://pi2.local").unwrap();
        c.set("cluster-name", "site_A-1").unwrap();
        let urls: Vec<String> = c.cluster_urls.iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["nats://127.0.0.1:4222", "nats://pi2.local:4222"]);
        c.validate().unwrap();

        let mut c = Config::default();
        c.apply_toml(
            "[cluster]\nurls = [\"nats://127.0.0.1:4222\", \"nats://[::1]:4223\"]\nname = \"site\"\nreplicas = 3\ncredentials = \"/etc/nats\"",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.cluster_urls[1], NatsUrl { host: "::1".into(), port: 4223 });
        assert_eq!((c.cluster_name.as_deref(), c.cluster_replicas), (Some("site"), 3));
        assert_eq!(c.cluster_credentials, Some(PathBuf::from("/etc/nats")));
        c.validate().unwrap();
        c.apply_toml("[cluster]\nurls = \"nats://10.0.0.1:4222\"", "t.toml").unwrap();
        assert_eq!(c.cluster_urls.len(), 1, "a later --cluster replaces the list");
    }

    #[test]
    fn bad_cluster_settings_say_what_to_do() {
        let mut c = Config::default();
        for bad in ["site.a", "a b", "", "roost>", "a*", "é"] {
            let e = c.set("cluster-name", bad).unwrap_err();
            assert!(e.0.contains("letters, digits, `_` or `-`"), "{bad:?}: {e}");
        }
        assert!(c.set("cluster", "tls://127.0.0.1:4222").unwrap_err().0.contains("only nats://"));
        assert!(c.set("cluster", "nats://u:p@127.0.0.1:4222").unwrap_err().0.contains("--cluster-credentials"));
        assert!(c.set("cluster", "nats://127.0.0.1:x").unwrap_err().0.contains("port"));
        assert!(c.set("cluster", "nats://a b:1").unwrap_err().0.contains("host and port"));
        assert!(c.set("cluster", " , ").unwrap_err().0.contains("one or more"));
        assert!(c.set("cluster-replicas", "2").unwrap_err().0.contains("1 or 3"));
        c.set("cluster", "nats://127.0.0.1:4222").unwrap();
        assert!(c.validate().unwrap_err().0.contains("--cluster-name"));
        let mut c = Config::default();
        c.set("cluster-name", "a").unwrap();
        assert!(c.validate().unwrap_err().0.contains("need --cluster"));
        let e = c.apply_toml("[cluster]\nurl = \"nats://x\"", "t.toml").unwrap_err();
        assert!(e.0.contains("[cluster] has no setting `url`"), "{e}");
        let e = c.apply_toml("[cluster]\nname = [\"a\"]", "t.toml").unwrap_err();
        assert!(e.0.contains("takes a string"), "{e}");
        // Like every flag, the key at the top level works too (spec §6).
        let mut flat = Config::default();
        flat.apply_toml("cluster = \"nats://a:4222,nats://b:4222\"\ncluster_name = \"site1\"", "t.toml").unwrap();
        assert_eq!((flat.cluster_urls.len(), flat.cluster_name.as_deref()), (2, Some("site1")));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("x", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("x", "10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("x", "10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("x", "5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("x", "7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(duration("x", "7w").is_err());
        assert!(duration("x", "s").is_err());
        assert!(duration("x", "-1s").is_err());
    }

    #[test]
    fn max_channels_and_the_retention_rules_text() {
        let mut c = Config::default();
        assert_eq!(c.max_channels, 100_000);
        c.apply_toml("max_channels = 5", "test.toml").unwrap();
        assert_eq!(c.max_channels, 5);
        assert!(c.set("max-channels", "0").unwrap_err().0.contains("at least 1"));
        let before = c.retention_rules();
        c.set("retention-age", "1d").unwrap();
        assert_ne!(c.retention_rules(), before, "a changed age rebuilds the retention index");
        let before = c.retention_rules();
        c.apply_toml("[[retention]]\npattern = \"s:*\"\nmessages = 5", "test.toml").unwrap();
        assert_ne!(c.retention_rules(), before, "so does a new rule");
    }

    #[test]
    fn flags_and_file_share_one_path() {
        let mut c = Config::default();
        c.apply_toml(
            r#"
            listen = "0.0.0.0:9000"
            max_message_bytes = 1024
            ping_interval = "5s"
            no_demo = true
            allowed_origin = ["http://a.example", "http://b.example/"]
            [[keys]]
            id = "k1"
            secret_file = "/etc/k1"
            [[retention]]
            pattern = "sensor:*"
            messages = 50
            "#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_message_bytes, 1024);
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert!(!c.demo);
        assert_eq!(c.allowed_origins, vec!["http://a.example", "http://b.example"]);
        assert_eq!(c.keys[0].id, "k1");
        assert_eq!(c.retention_for("sensor:1"), (50, c.retention_age));
        assert_eq!(c.retention_for("room:1"), (10_000, c.retention_age));
        // A flag applied after the file wins.
        c.set("max-message-bytes", "2048").unwrap();
        assert_eq!(c.max_message_bytes, 2048);
    }

    #[test]
    fn bad_settings_say_what_to_do() {
        let mut c = Config::default();
        let e = c.apply_toml("max_mesage_bytes = 5", "f.toml").unwrap_err();
        assert!(e.0.contains("unknown setting `max_mesage_bytes` (did you mean `max_message_bytes`?)"), "{e}");
        let e = c.apply_toml("[retention]\npattern = \"a:*\"\nmessages = 5", "f.toml").unwrap_err();
        assert!(e.0.contains("`[[retention]]`"), "{e}");
        assert!(c.set("listen", "localhost").unwrap_err().0.contains("127.0.0.1:8080"));
        assert!(c.set("listen", "bad host:80").is_err());
        assert!(c.set("max-subscriptions", "0").is_err());
        assert!(c.apply_toml("listen = [", "f.toml").unwrap_err().0.contains("not valid TOML"));
        c.set("max-message-bytes", "1000000").unwrap();
        assert!(c.validate().unwrap_err().0.contains("max-send-buffer-bytes"));
    }

    #[test]
    fn a_host_name_in_listen_is_kept_for_main_to_resolve() {
        let mut c = Config::default();
        c.set("listen", "localhost:8081").unwrap();
        assert_eq!((c.listen.port(), c.listen_name.as_deref()), (8081, Some("localhost")));
        c.set("listen", "127.0.0.1:9000").unwrap();
        assert_eq!(c.listen_name, None, "an address replaces an earlier name");
    }

    #[test]
    fn the_nearest_setting_is_suggested() {
        assert_eq!(did_you_mean("port", "--", &[]), " (did you mean `--listen`?)");
        assert_eq!(did_you_mean("max-conections", "--", &[]), " (did you mean `--max-connections`?)");
        assert_eq!(did_you_mean("reed", "--", &["read"]), " (did you mean `--read`?)");
        assert_eq!(did_you_mean("zzzzzzzz", "--", &[]), "");
    }
}
