//! The `roostd` binary: parse the command line, find the keys, open the
//! store, run the server, and turn every failure into an exit code with a
//! one-line reason (0 clean stop, 1 runtime failure, 2 bad configuration or
//! usage). The only place that reads argv, the environment and key files.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roostd::auth::{self, Key, KeyRing, Verifier};
use roostd::config::{self, Config, OnCorrupt, SETTINGS};
use roostd::logger;
use roostd::notify;
use roostd::server::{self, Server};
use roostd::store::{self, Store, StoreError};
use roostd::writer::SyncSource;

/// Shortest secret accepted: HS256 keys shorter than the hash are weak.
const MIN_SECRET_BYTES: usize = 32;

/// A failure with its exit code and the line that explains it.
struct Fail(u8, String);

fn usage<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(2, msg.into()))
}

fn main() -> ExitCode {
    logger::init(logger::parse_level(std::env::var("RUST_LOG").ok().as_deref()));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("roostd: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Vec<OsString>) -> Result<(), Fail> {
    let mut args = args.into_iter();
    let Some(cmd) = args.next() else {
        print!("{}", top_help());
        return usage("no command given; try `roostd serve`");
    };
    let rest: Vec<OsString> = args.collect();
    match cmd.to_str() {
        Some("serve") => serve(rest),
        Some("token") => token(rest),
        Some("backup") => backup(rest),
        Some("cert") => cert(rest),
        Some("-h" | "--help" | "help") => {
            print!("{}", top_help());
            Ok(())
        }
        Some("-V" | "--version") => {
            println!("roostd {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            let typed = cmd.to_string_lossy();
            let near = COMMANDS.iter().find(|c| typed.len() > 1 && (c.starts_with(&*typed) || typed.starts_with(*c)));
            let hint = near.map(|c| format!("did you mean `roostd {c}`? ")).unwrap_or_default();
            usage(format!(
                "unknown command {typed:?}; {hint}the commands are {} (see roostd --help)",
                COMMANDS.join(", ")
            ))
        }
    }
}

const COMMANDS: [&str; 4] = ["serve", "token", "backup", "cert"];

fn top_help() -> String {
    format!(
        "roostd {} — a WebSocket message and sync server with durable history\n\n\
         Usage:\n  roostd serve [FLAGS]        run the server (roostd serve --help)\n  \
         roostd token --sub NAME ... print a token signed with the server's key\n  \
         roostd backup FILE          write a consistent, compacted copy of the store\n  \
         roostd cert --name NAME ... write a self-signed certificate for --tls-cert\n\n\
         Each command explains itself: roostd COMMAND --help.\n\n\
         Flags of serve (also keys of its --config FILE; details in roostd serve --help):\n{}",
        env!("CARGO_PKG_VERSION"),
        wrap(std::iter::once("--config FILE".to_string()).chain(SETTINGS.iter().map(|s| if s.value.is_empty() {
            format!("--{}", s.key)
        } else {
            format!("--{} {}", s.key, s.value)
        })))
    )
}

/// Lists words separated by commas on indented lines of at most 80 columns.
fn wrap(words: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut line = String::from(" ");
    for w in words {
        if line.len() + w.len() + 2 > 80 {
            out.push_str(&line);
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(&w);
        line.push(',');
    }
    line.pop();
    out.push_str(&line);
    out.push('\n');
    out
}

fn serve_help() -> String {
    let mut out = String::from(
        "Usage: roostd serve [--config FILE] [FLAGS]\n\nEvery flag may also be set in the TOML file given with --config\n\
         (same name, with _ for -); flags win over the file.\n\n",
    );
    for s in SETTINGS {
        let flag = if s.value.is_empty() { format!("--{}", s.key) } else { format!("--{} {}", s.key, s.value) };
        out.push_str(&format!("  {flag:<34} {} [default: {}]\n", s.help, s.default));
    }
    out.push_str(
        "\nOnly in the --config file (lists of tables, one [[...]] header per entry):\n\
         \x20 [[retention]]  pattern = \"sensor:*\", messages = 500, age = \"1d\": retention for the\n\
         \x20                channels a pattern matches (first match wins; else the two flags above)\n\
         \x20 [[keys]]       id = \"k1\", secret_file = \"/etc/roostd/k1\": a key ring for rotation: a token\n\
         \x20                names its key in the JWT header kid; the first is the default (no kid)\n",
    );
    out.push_str("\nDurations: 500ms, 10s, 5m, 2h, 7d. Sizes in bytes. RUST_LOG sets the log level (default info).\n");
    out
}

/// The extra flags of a command that take no value.
const COMMAND_SWITCHES: &[&str] = &["api"];

/// Reads `--config FILE` and every setting flag, file first, flags after.
/// Flags not settings (`extra`) are handed back for the command to use.
fn load_config(cmd: &str, args: Vec<OsString>, extra: &[&str]) -> Result<(Config, Vec<(String, String)>), Fail> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut others = Vec::new();
    let mut file = None;
    while let Some(arg) = next_arg(&mut parser)? {
        match arg {
            lexopt::Arg::Long("config") => file = Some(PathBuf::from(value(&mut parser, "config")?)),
            lexopt::Arg::Long("help") | lexopt::Arg::Short('h') => {
                return Err(Fail(0, String::new()));
            }
            lexopt::Arg::Long(name) if Config::is_switch(name) => flags.push((name.to_string(), "true".into())),
            lexopt::Arg::Long(name) if SETTINGS.iter().any(|s| s.key == name) => {
                let name = name.to_string();
                let v = value(&mut parser, &name)?;
                flags.push((name, v));
            }
            // A command's own switch (`token --api`): no value follows.
            lexopt::Arg::Long(name) if COMMAND_SWITCHES.contains(&name) && extra.contains(&name) => {
                others.push((name.to_string(), "true".into()));
            }
            lexopt::Arg::Long(name) if extra.contains(&name) => {
                let name = name.to_string();
                let v = value(&mut parser, &name)?;
                others.push((name, v));
            }
            lexopt::Arg::Value(v) if extra.contains(&"") => others.push((String::new(), v.to_string_lossy().into())),
            lexopt::Arg::Long(name) => {
                let mut known = vec!["config"];
                known.extend(extra.iter().filter(|e| !e.is_empty()));
                let hint = config::did_you_mean(name, "--", &known);
                return usage(format!("unknown flag --{name}{hint}; roostd {cmd} --help lists them all"));
            }
            other => return usage(format!("{}; see roostd {cmd} --help", other.unexpected())),
        }
    }
    let mut cfg = Config::default();
    if let Some(path) = file {
        let text = fs::read_to_string(&path)
            .or_else(|e| usage(format!("cannot read the config file {}: {e}", path.display())))?;
        cfg.apply_toml(&text, &path.display().to_string()).map_err(|e| Fail(2, e.0))?;
    }
    for (k, v) in &flags {
        cfg.set(k, v).map_err(|e| Fail(2, e.0))?;
    }
    cfg.validate().map_err(|e| Fail(2, e.0))?;
    Ok((cfg, others))
}

/// The next command-line argument; a malformed one is a usage error.
fn next_arg(parser: &mut lexopt::Parser) -> Result<Option<lexopt::Arg<'_>>, Fail> {
    parser.next().or_else(|e| usage(e.to_string()))
}

fn value(parser: &mut lexopt::Parser, name: &str) -> Result<String, Fail> {
    match parser.value() {
        Ok(v) => v.into_string().or_else(|_| usage(format!("--{name} must be valid UTF-8"))),
        Err(_) => usage(format!("--{name} needs a value")),
    }
}

/// How to find the signing keys (spec §6): `[[keys]]`, else `--secret-file`,
/// else `$ROOSTD_SECRET`, else `<data>/secret` (generated by `serve` only).
/// True in the second place when the secret was created just now.
fn key_ring(cfg: &Config, may_generate: bool) -> Result<(KeyRing, bool), Fail> {
    let check = |secret: Vec<u8>, whence: &str| -> Result<Vec<u8>, Fail> {
        if secret.len() < MIN_SECRET_BYTES {
            return usage(format!(
                "the secret from {whence} is {} bytes; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(secret)
    };
    if !cfg.keys.is_empty() {
        let mut keys = Vec::new();
        for k in &cfg.keys {
            let secret = read_secret(&k.secret_file)?;
            keys.push(Key::new(Some(k.id.clone()), check(secret, &k.secret_file.display().to_string())?));
        }
        return Ok((KeyRing::new(keys), false));
    }
    if let Some(file) = &cfg.secret_file {
        let secret = check(read_secret(file)?, &file.display().to_string())?;
        return Ok((KeyRing::new(vec![Key::new(None, secret)]), false));
    }
    if let Some(env) = std::env::var_os("ROOSTD_SECRET") {
        let secret = env.into_string().or_else(|_| usage("ROOSTD_SECRET must be valid UTF-8"))?;
        return Ok((KeyRing::new(vec![Key::new(None, check(secret.into_bytes(), "ROOSTD_SECRET")?)]), false));
    }
    let path = cfg.data.join("secret");
    if path.exists() {
        let secret = check(read_secret(&path)?, &path.display().to_string())?;
        return Ok((KeyRing::new(vec![Key::new(None, secret)]), false));
    }
    if !may_generate {
        return usage(format!(
            "no secret: {} does not exist; start `roostd serve` once (it creates one), or set ROOSTD_SECRET or --secret-file",
            path.display()
        ));
    }
    let secret = generate_secret(&path)?;
    Ok((KeyRing::new(vec![Key::new(None, secret)]), true))
}

/// How the user can run this binary again from the current folder: `roostd`
/// when that name on the PATH is this file, else its path (`target/release/roostd`
/// after `cargo run`), so a printed hint works when pasted.
fn self_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(fs::canonicalize) else {
        return "roostd".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|dir| fs::canonicalize(dir.join("roostd")).is_ok_and(|f| f == me))
    });
    if on_path {
        return "roostd".into();
    }
    let cwd = std::env::current_dir().and_then(fs::canonicalize).unwrap_or_default();
    me.strip_prefix(&cwd).unwrap_or(&me).display().to_string()
}

/// `--listen localhost:8081`: the name resolved, IPv4 first (what
/// `127.0.0.1` clients and the docs expect).
fn resolve_listen(cfg: &mut Config) -> Result<(), Fail> {
    use std::net::ToSocketAddrs as _;
    let Some(name) = cfg.listen_name.clone() else { return Ok(()) };
    let port = cfg.listen.port();
    let addrs: Vec<_> = (name.as_str(), port)
        .to_socket_addrs()
        .or_else(|e| {
            usage(format!(
                "--listen {name}:{port}: cannot resolve {name:?} ({e}); give an IP address like 127.0.0.1:{port}"
            ))
        })?
        .collect();
    cfg.listen = match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
        Some(a) => *a,
        None => {
            return usage(format!(
                "--listen {name}:{port}: {name:?} has no address; give an IP address like 127.0.0.1:{port}"
            ))
        }
    };
    Ok(())
}

/// The WebSocket URL of the server these settings describe; `<host>` stands
/// for a wildcard address, which no client can connect to.
fn ws_url(cfg: &Config) -> String {
    let scheme = if cfg.tls_cert.is_some() { "wss" } else { "ws" };
    let port = cfg.listen.port();
    let host = match (&cfg.listen_name, cfg.listen.ip()) {
        (Some(name), _) => name.clone(),
        (None, ip) if ip.is_unspecified() => "<host>".into(),
        (None, std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        (None, ip) => ip.to_string(),
    };
    format!("{scheme}://{host}:{port}/ws")
}

fn read_secret(path: &Path) -> Result<Vec<u8>, Fail> {
    let text = fs::read(path).or_else(|e| usage(format!("cannot read the secret file {}: {e}", path.display())))?;
    // Files written by `echo` end in a newline that is not part of the secret.
    let end = text.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    Ok(text[..end].to_vec())
}

fn generate_secret(path: &Path) -> Result<Vec<u8>, Fail> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Fail(1, format!("no randomness for a secret: {e}")))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).or_else(|e| usage(format!("cannot create the data folder {}: {e}", dir.display())))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .or_else(|e| usage(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(hex.as_bytes())
        .and_then(|_| f.sync_all())
        .or_else(|e| usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(hex.into_bytes())
}

fn serve(args: Vec<OsString>) -> Result<(), Fail> {
    let (mut cfg, _) = match load_config("serve", args, &[]) {
        Err(Fail(0, _)) => {
            print!("{}", serve_help());
            return Ok(());
        }
        other => other?,
    };
    let cluster_credentials = roostd::cluster::credentials(&cfg).map_err(|e| Fail(2, e))?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(roostd::tls::load(cert, key).map_err(|e| Fail(2, e))?),
        _ => None,
    };
    if let Some(url) = &cfg.publish_hook {
        roostd::hook::HookUrl::parse(url).map_err(|e| Fail(2, e))?;
    }
    resolve_listen(&mut cfg)?;
    let listen = cfg.listen;
    let cannot_listen = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "another program uses that port; stop it or pass --listen with another port"
        } else {
            "check --listen"
        };
        Fail(2, format!("cannot listen on {listen}: {e}; {hint}"))
    };
    // A trial bind before anything is created: a server that cannot listen
    // must not leave a data folder and a secret behind.
    drop(std::net::TcpListener::bind(listen).map_err(cannot_listen)?);
    fs::create_dir_all(&cfg.data)
        .or_else(|e| usage(format!("cannot create the data folder {}: {e}; pass --data DIR", cfg.data.display())))?;
    let (keys, new_secret) = key_ring(&cfg, true)?;
    let _owner = store::claim(&cfg.data).map_err(|e| match e {
        StoreError::Locked(m) => Fail(2, m),
        e => Fail(2, format!("{e}; is the data folder writable? pass --data DIR")),
    })?;
    let store = join_cluster(&cfg, open_store(&cfg)?, cluster_credentials)?;
    let nofile = raise_nofile_limit();
    let max_connections = cfg.max_connections.unwrap_or_else(|| server::default_max_connections(nofile));
    let verifier = Verifier::new(keys, cfg.leeway.as_secs(), cfg.audience.clone());
    let pusher = pusher_app(&cfg, &verifier)?;
    let tls_note = if tls.is_some() { ", TLS" } else { "" };
    let clock_sync = clock_sync()?;
    let first_token = new_secret.then(|| {
        format!(
            "roostd: created a new secret in {}\nroostd: mint a first token with: {} token --data {} --sub me --read '*' --write '*'",
            cfg.data.join("secret").display(),
            self_command(),
            cfg.data.display()
        )
    });
    let ready_file = cfg.ready_file.clone();
    let mut server =
        Server::bind(cfg, store, verifier, max_connections, tls, clock_sync, pusher).map_err(cannot_listen)?;
    if let Some(hint) = first_token {
        eprintln!("{hint}");
    }
    log::info!(
        "roostd {} listening on {} (max {max_connections} connections{tls_note})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    if let Some(path) = ready_file {
        write_ready_file(&path, server.local_addr())?;
    }
    notify::ready(server.local_addr());
    let stopped = server.run();
    notify::stopping();
    match stopped {
        Ok(_) => {
            log::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => Err(Fail(1, format!("{e}; the server stopped. Check the disk, then restart it"))),
    }
}

/// The Pusher app, when one is configured (pusher.md §1). Its secret
/// defaults to the default key, so the main application shares one secret
/// with roostd.
fn pusher_app(cfg: &Config, verifier: &Verifier) -> Result<Option<roostd::proto::pusher::App>, Fail> {
    let (Some(id), Some(key)) = (&cfg.pusher_app_id, &cfg.pusher_key) else { return Ok(None) };
    let secret = match &cfg.pusher_secret_file {
        Some(file) => read_secret(file)?,
        None => verifier.default_secret().to_vec(),
    };
    if secret.is_empty() {
        return usage("the Pusher app secret is empty: pass --pusher-secret-file with a non-empty file");
    }
    Ok(Some(roostd::proto::pusher::App { id: id.clone(), key: key.clone(), secret, public: cfg.pusher_public.clone() }))
}

/// Who says whether the clock is synchronized (spec §10): the kernel, or a
/// test through `ROOSTD_TEST_CLOCK_SYNCED`.
fn clock_sync() -> Result<SyncSource, Fail> {
    match std::env::var("ROOSTD_TEST_CLOCK_SYNCED").as_deref() {
        Err(_) => Ok(SyncSource::Kernel),
        Ok("1") => Ok(SyncSource::Fixed(true)),
        Ok("0") => Ok(SyncSource::Fixed(false)),
        Ok(v) => usage(format!("ROOSTD_TEST_CLOCK_SYNCED must be 0 or 1, not {v:?}; unset it outside tests")),
    }
}

/// In cluster mode, makes the store a replica of the cluster's stream:
/// a replica already is one; an empty store takes the stream's epoch, which
/// needs the stream, so this waits for NATS (the loop has not started: it
/// would have nothing to serve); a single node's history is refused.
fn join_cluster(
    cfg: &Config,
    mut store: Store,
    credentials: Option<roostd::cluster::nats::Credentials>,
) -> Result<Store, Fail> {
    use roostd::cluster::{Cluster, Event, Settings};
    if cfg.cluster_urls.is_empty() {
        return Ok(store);
    }
    let single = || {
        Fail(
            2,
            format!(
                "the store in {} holds a single node's history; --cluster needs an empty data folder \
                 (or a peer's backup): start this node from one",
                cfg.data.display()
            ),
        )
    };
    let broken = |e: StoreError| Fail(1, format!("{e}; check the data folder"));
    if store.stream_seq().map_err(broken)?.is_some() {
        return Ok(store);
    }
    if store.channel_count().map_err(broken)? > 0 {
        return Err(single());
    }
    log::info!("joining the cluster {:?}: asking NATS for the stream", cfg.cluster_name.as_deref().unwrap_or(""));
    let probe = Cluster::start(Settings::new(cfg, credentials, None), 0, Box::new(|| {}));
    let epoch = loop {
        match probe.next_event(Duration::from_secs(3600)) {
            Some(Event::Up { epoch, .. }) => break epoch,
            Some(Event::Down(why)) => log::warn!("waiting for the cluster: {why}"),
            Some(Event::Trimmed { first_seq }) => {
                return Err(Fail(
                    2,
                    format!(
                        "the cluster's stream no longer holds its first messages (it starts at {first_seq}): \
                         an empty node cannot be built from it; seed {} from a peer's backup (roostd backup)",
                        cfg.data.display()
                    ),
                ))
            }
            _ => {}
        }
    };
    drop(probe);
    if !store.become_replica(&epoch).map_err(broken)? {
        return Err(single());
    }
    Ok(store)
}

/// Writes `addr` and a newline to `path` through a temp file and a rename,
/// so a reader polling for the file never sees it half written.
fn write_ready_file(path: &Path, addr: SocketAddr) -> Result<(), Fail> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Fail(2, format!("cannot write the ready file {}: {e}; check --ready-file", path.display())))
}

/// Opens the store, moving a damaged one aside when told to.
fn open_store(cfg: &Config) -> Result<Store, Fail> {
    match Store::open(&cfg.data, cfg.max_store_bytes) {
        Ok(s) => Ok(s),
        Err(StoreError::Corrupt(why)) if cfg.on_corrupt == OnCorrupt::Fresh => {
            let aside = cfg.data.join(format!("corrupt-{}", utc_stamp()));
            fs::create_dir_all(&aside).map_err(|e| Fail(1, format!("cannot create {}: {e}", aside.display())))?;
            for f in ["data.mdb", "lock.mdb"] {
                let from = cfg.data.join(f);
                if from.exists() {
                    fs::rename(&from, aside.join(f))
                        .map_err(|e| Fail(1, format!("cannot move {} aside: {e}", from.display())))?;
                }
            }
            log::error!(
                "the store was unreadable ({why}); moved it to {} and started a fresh one with a new epoch",
                aside.display()
            );
            Store::open(&cfg.data, cfg.max_store_bytes).map_err(|e| Fail(1, e.to_string()))
        }
        Err(StoreError::Corrupt(why)) => usage(format!(
            "the store in {} is unreadable ({why}); restore a backup, or start with --on-corrupt fresh to move it aside",
            cfg.data.display()
        )),
        Err(StoreError::Full) => usage(format!(
            "the store in {} is larger than --max-store-bytes {}; raise it",
            cfg.data.display(),
            cfg.max_store_bytes
        )),
        Err(e) => usage(format!("cannot open the store in {}: {e}; is the folder writable?", cfg.data.display())),
    }
}

/// `token --info`: the presence `info` claim (spec §7), a JSON object of at
/// most 1 KiB, or exit 2 saying so.
fn info_object(v: &str) -> Result<serde_json::Value, Fail> {
    let object =
        serde_json::from_str(v).ok().filter(|i: &serde_json::Value| i.is_object() && i.to_string().len() <= 1024);
    object.ok_or_else(|| {
        Fail(2, format!("--info takes a JSON object of at most 1 KiB, like '{{\"name\":\"Alice\"}}', not {v:?}"))
    })
}

fn token(args: Vec<OsString>) -> Result<(), Fail> {
    let extra = ["sub", "read", "write", "ttl", "api", "info"];
    let (cfg, others) = match load_config("token", args, &extra) {
        Err(Fail(0, _)) => {
            print!(
                "Usage: roostd token --sub NAME [--read PATTERN]... [--write PATTERN]... [--ttl 1h]\n\
                 \x20             [--info JSON] [--api] [--config FILE] [--data DIR] [--secret-file FILE]\n\n\
                 Prints a token signed with the key `roostd serve` uses. Patterns: a channel\n\
                 name, a prefix ending in * (room:*), or * for every channel. A token without\n\
                 --read or --write can do nothing (a warning says so). Given the server's\n\
                 --config (or --listen and --tls-cert), it names the URL to connect to.\n\
                 --api marks the main application's own token (\"api\": true): only such\n\
                 tokens may call the HTTP API (/api/...); never hand one to a client.\n\
                 --info '{{\"name\":\"Alice\"}}' is shown to others on presence channels (a JSON\n\
                 object of at most 1 KiB).\n"
            );
            return Ok(());
        }
        other => other?,
    };
    let mut sub = None;
    let (mut read, mut write, mut ttl) = (Vec::new(), Vec::new(), std::time::Duration::from_secs(3600));
    let mut claims_api = false;
    let mut info_claim = None;
    for (k, v) in others {
        match k.as_str() {
            "sub" => sub = Some(v),
            "read" => read.push(v),
            "write" => write.push(v),
            "ttl" => ttl = config::duration("ttl", &v).map_err(|e| Fail(2, e.0))?,
            "api" => claims_api = true,
            "info" => info_claim = Some(info_object(&v)?),
            _ => {}
        }
    }
    let Some(sub) = sub.filter(|s| !s.is_empty()) else {
        return usage("roostd token needs --sub NAME (the client's identity)");
    };
    let (keys, _) = key_ring(&cfg, false)?;
    let key = keys.default_key().ok_or_else(|| Fail(2, "no key configured".into()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl.as_secs() });
    if !read.is_empty() {
        claims["read"] = read.into();
    }
    if !write.is_empty() {
        claims["write"] = write.into();
    }
    if let Some(aud) = &cfg.audience {
        claims["aud"] = aud.clone().into();
    }
    if claims_api {
        claims["api"] = true.into();
    }
    if let Some(info) = info_claim {
        claims["info"] = info;
    }
    // Anything that grants access (read, write, or a flag such as `api`) is
    // a claim other than the identity, times and audience.
    let grants = claims.as_object().is_some_and(|c| {
        c.iter().any(|(k, v)| {
            !matches!(k.as_str(), "sub" | "iat" | "exp" | "aud" | "info") && *v != serde_json::Value::Bool(false)
        })
    });
    println!("{}", auth::mint(&claims, key));
    if !grants {
        eprintln!(
            "roostd: warning: this token grants nothing: it may connect but not read or write any channel; \
             add --read PATTERN and --write PATTERN (e.g. --read 'room:*' --write 'room:*')"
        );
    }
    eprintln!("roostd: token for {sub}, valid for {}s; connect to {}?token=...", ttl.as_secs(), ws_url(&cfg));
    Ok(())
}

fn backup(args: Vec<OsString>) -> Result<(), Fail> {
    let (cfg, others) = match load_config("backup", args, &[""]) {
        Err(Fail(0, _)) => {
            print!("Usage: roostd backup FILE [--config FILE] [--data DIR]\n\nWrites a consistent, compacted copy of the store, also while the server runs,\nunder a new epoch (clients resuming against a restored copy resync). FILE must\nnot exist; it is created with mode 0600.\nRestore: put FILE as data.mdb into an empty data folder.\n");
            return Ok(());
        }
        other => other?,
    };
    let files: Vec<String> = others.into_iter().map(|(_, v)| v).collect();
    let [dest] = files.as_slice() else {
        return usage("roostd backup takes one FILE to write");
    };
    let dest = PathBuf::from(dest);
    if !cfg.data.join("data.mdb").exists() {
        return usage(format!("there is no store in {}; pass --data DIR", cfg.data.display()));
    }
    // A new file only, never through a symlink: a backup holds every
    // message, and `roostd backup` may run as a more privileged user than
    // whoever can write where FILE points.
    let file = match fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&dest)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ELOOP) => {
            return usage(format!(
                "{} exists (a file or a symlink); give a new file name, or remove it first",
                dest.display()
            ))
        }
        Err(e) => return usage(format!("cannot create {}: {e}; give a file in a writable folder", dest.display())),
    };
    let store = Store::open(&cfg.data, cfg.max_store_bytes).map_err(|e| Fail(1, e.to_string()))?;
    let epoch = store.backup(file, &dest).map_err(|e| {
        // Half a copy is no backup; the name is free for the next try.
        let _ = fs::remove_file(&dest);
        Fail(1, format!("{e}; check the free space where FILE goes"))
    })?;
    eprintln!(
        "roostd: wrote {} with the new epoch {epoch} (restore: copy it as data.mdb into an empty data folder)",
        dest.display()
    );
    Ok(())
}

const CERT_HELP: &str = "Usage: roostd cert --name NAME... [--ip ADDR...] [--cert FILE] [--key FILE] [--days N]

Writes a self-signed certificate (default roostd-cert.pem) and its private key
(default roostd-key.pem, mode 0600) for `roostd serve --tls-cert FILE --tls-key FILE`,
valid for the given host names and IP addresses, and prints its SHA-256
fingerprint so clients can check they talk to this server. --days: validity
(default 825).
";

fn cert(args: Vec<OsString>) -> Result<(), Fail> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut names, mut ips) = (Vec::new(), Vec::new());
    let (mut cert, mut key, mut days) = (PathBuf::from("roostd-cert.pem"), PathBuf::from("roostd-key.pem"), 825u32);
    while let Some(arg) = next_arg(&mut parser)? {
        match arg {
            lexopt::Arg::Long("name") => names.push(value(&mut parser, "name")?),
            lexopt::Arg::Long("ip") => {
                let v = value(&mut parser, "ip")?;
                ips.push(v.parse().or_else(|_| usage(format!("--ip {v:?} is not an IP address")))?);
            }
            lexopt::Arg::Long("cert") => cert = PathBuf::from(value(&mut parser, "cert")?),
            lexopt::Arg::Long("key") => key = PathBuf::from(value(&mut parser, "key")?),
            lexopt::Arg::Long("days") => {
                let v = value(&mut parser, "days")?;
                days = v
                    .parse()
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| Fail(2, format!("--days takes a whole number, not {v:?}")))?;
            }
            lexopt::Arg::Long("help") | lexopt::Arg::Short('h') => {
                print!("{CERT_HELP}");
                return Ok(());
            }
            other => return usage(format!("{}; see roostd cert --help", other.unexpected())),
        }
    }
    if names.is_empty() && ips.is_empty() {
        return usage("roostd cert needs at least one --name (e.g. pi.local) or --ip");
    }
    for path in [&cert, &key] {
        if path.exists() {
            return usage(format!("{} exists; remove it or pass --cert/--key with new names", path.display()));
        }
    }
    let made = roostd::tls::self_signed(&names, &ips, days).map_err(|e| Fail(2, e))?;
    fs::write(&cert, &made.cert_pem).map_err(|e| Fail(1, format!("cannot write {}: {e}", cert.display())))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| Fail(1, format!("cannot write {}: {e}", key.display())))?;
    f.write_all(made.key_pem.as_bytes()).map_err(|e| Fail(1, format!("cannot write {}: {e}", key.display())))?;
    println!("{}", made.fingerprint);
    eprintln!(
        "roostd: wrote {} and {} (SHA-256 fingerprint above)\nroostd: serve with: roostd serve --tls-cert {} --tls-key {}",
        cert.display(),
        key.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    logger::utc(secs).replace(':', "")
}
