//! Spec §6: the command line — help, usage errors with exit code 2 and a
//! one-line reason, the data folder lock, `roostd token`, and the secret
//! that `serve` generates when none is configured.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Output;

use roostd::auth::{KeyRing, Verifier};
use serde_json::json;

use crate::support::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2 and exactly one line on stderr, which is returned.
#[track_caller]
fn assert_usage_error(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line reason, got: {err:?}");
    lines[0].to_string()
}

#[test]
fn roostd_help_exits_0_and_documents_listen() {
    let out = run_roostd(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("serve"), "{}", stdout(&out));
    assert!(stdout(&out).contains("--listen"), "`roostd --help` documents each flag (spec §6):\n{}", stdout(&out));
}

#[test]
fn serve_help_exits_0_and_documents_every_flag() {
    let out = run_roostd(&["serve", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in [
        "--config",
        "--listen",
        "--data",
        "--secret-file",
        "--allowed-origin",
        "--max-connections",
        "--ready-file",
        "--max-connections-per-ip",
        "--max-message-bytes",
        "--handshake-timeout",
        "--ping-interval",
        "--pong-timeout",
        "--retention-messages",
        "--retention-age",
        "--dedupe-window",
        "--publish-rate",
        "--max-subscriptions",
        "--max-fragments",
        "--max-send-buffer-bytes",
        "--audience",
        "--leeway",
        "--on-corrupt",
        "--no-demo",
        "--max-store-bytes",
        "--max-channels",
        "--tls-cert",
        "--tls-key",
        "--echo",
    ] {
        assert!(help.contains(flag), "`roostd serve --help` does not mention {flag}:\n{help}");
    }
}

#[test]
fn an_unknown_flag_exits_2_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run_roostd(&["serve", "--data", data, "--no-such-flag"], &[("ROOSTD_SECRET", SECRET)]);
    let line = assert_usage_error(&out);
    assert!(line.contains("no-such-flag"), "the reason names the flag: {line}");
    let out = run_roostd(&["serve", "--data", data, "--max-subscriptions", "many"], &[("ROOSTD_SECRET", SECRET)]);
    let line = assert_usage_error(&out);
    assert!(line.contains("max-subscriptions"), "{line}");
    let out = run_roostd(&["frobnicate"], &[]);
    assert_usage_error(&out);
}

#[test]
fn a_secret_shorter_than_32_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run_roostd(&["serve", "--listen", "127.0.0.1:0", "--data", data], &[("ROOSTD_SECRET", "short")]);
    let line = assert_usage_error(&out);
    assert!(line.contains("32"), "the reason says how long a secret must be: {line}");
    // The same key lookup for `token`.
    let out = run_roostd(&["token", "--data", data, "--sub", "x"], &[("ROOSTD_SECRET", "short")]);
    assert!(assert_usage_error(&out).contains("32"));
    assert!(stdout(&out).is_empty(), "no token printed");
}

#[test]
fn a_port_in_use_exits_2() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out =
        run_roostd(&["serve", "--listen", &addr, "--data", dir.path().to_str().unwrap()], &[("ROOSTD_SECRET", SECRET)]);
    let line = assert_usage_error(&out);
    assert!(line.contains(&addr), "the reason names the address: {line}");
}

#[test]
fn a_second_server_on_the_same_data_folder_exits_2_naming_the_first() {
    let server = TestServer::start(&[]);
    let data = server.data_dir().to_str().unwrap().to_string();
    let out = run_roostd(&["serve", "--listen", "127.0.0.1:0", "--data", &data], &[("ROOSTD_SECRET", SECRET)]);
    let line = assert_usage_error(&out);
    assert!(line.contains(&server.pid().to_string()), "the reason names process {}: {line}", server.pid());
    // The first server is unharmed.
    let mut c = server.ws(&token_all("alice"));
    assert_eq!(c.publish("still", json!(1)), 1);
}

#[test]
fn roostd_token_prints_one_line_that_the_server_accepts() {
    let server = TestServer::start(&[]);
    let data = server.data_dir().to_str().unwrap().to_string();
    let out = run_roostd(&["token", "--data", &data, "--sub", "x", "--read", "*"], &[("ROOSTD_SECRET", SECRET)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on one line: {text:?}");
    let t = lines[0].trim();
    assert_eq!(t.split('.').count(), 3, "a compact JWT: {t}");

    let mut c = server.ws(t);
    assert_eq!(c.sub("anything")["op"], "subok");
    // `--read '*'` only: publishing is forbidden.
    let r = c.request(json!({"op": "pub", "ch": "anything", "data": 1, "id": 1}));
    assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("err"), Some("forbidden")), "{r}");
}

#[test]
fn roostd_token_info_is_shown_to_others_on_a_presence_channel_and_a_bad_one_exits_2() {
    let server = TestServer::start(&[]);
    let data = server.data_dir().to_str().unwrap().to_string();
    let bad = run_roostd(&["token", "--data", &data, "--sub", "x", "--info", "[1]"], &[("ROOSTD_SECRET", SECRET)]);
    assert!(assert_usage_error(&bad).contains("--info takes a JSON object"));
    let out = run_roostd(
        &["token", "--data", &data, "--sub", "alice", "--read", "presence-*", "--info", r#"{"name":"Alice"}"#],
        &[("ROOSTD_SECRET", SECRET)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = server.ws(stdout(&out).trim());
    let r = c.request(json!({"op": "sub", "ch": "presence-room", "id": 1}));
    assert_eq!(r["op"], "subok", "{r}");
    let list = c.recv_json();
    assert_eq!(list["members"], json!([{"user": "alice", "info": {"name": "Alice"}}]), "{list}");
}

#[test]
fn roostd_token_api_mints_the_main_applications_token_for_the_http_api() {
    let server = TestServer::start(&[]);
    let data = server.data_dir().to_str().unwrap().to_string();
    let mint = |api: bool| {
        let mut args = vec!["token", "--data", &data, "--sub", "app", "--read", "*", "--write", "*"];
        if api {
            args.push("--api");
        }
        let out = run_roostd(&args, &[("ROOSTD_SECRET", SECRET)]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let verifier = Verifier::new(KeyRing::new(vec![test_key()]), 30, None);
    let app = mint(true);
    assert!(verifier.verify(&app, now_secs()).unwrap().api, "--api sets \"api\": true");
    let client = mint(false);
    assert!(!verifier.verify(&client, now_secs()).unwrap().api, "without --api, no api claim");

    let get = |token: &str| {
        server.http(&format!("GET /api/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"))
    };
    assert_eq!(get(&app).status, 200);
    get(&client).assert_refusal(403, "api_forbidden");

    let help = stdout(&run_roostd(&["token", "--help"], &[]));
    assert!(help.contains("--api"), "token --help documents --api: {help}");
}

#[test]
fn serve_without_a_secret_creates_one_with_mode_0600() {
    let server = TestServer::options().no_secret().start();
    let secret = server.data_dir().join("secret");
    let meta = std::fs::metadata(&secret).expect("serve creates <data>/secret");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode of {}", secret.display());
    let text = std::fs::read_to_string(&secret).unwrap();
    assert!(text.trim().len() >= 32, "a secret of at least 32 bytes");

    // `token` finds the same key through the data folder, and the server accepts it.
    let data = server.data_dir().to_str().unwrap().to_string();
    let out = run_roostd(&["token", "--data", &data, "--sub", "me", "--read", "*", "--write", "*"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t = stdout(&out).trim().to_string();
    let mut c = server.ws(&t);
    assert_eq!(c.publish("first", json!("hello")), 1);
    // A token signed with another secret is not accepted.
    assert_eq!(server.try_ws(&token_all("alice")).err().map(|e| e.0), Some(401));
}

// Issue 20: every error names the fix.

#[test]
fn a_flag_roostd_does_not_have_suggests_the_nearest_one() {
    let line = assert_usage_error(&run_roostd(&["serve", "--port", "8081"], &[]));
    assert!(line.contains("--port") && line.contains("did you mean `--listen`?"), "{line}");
    let line = assert_usage_error(&run_roostd(&["serve", "--max-conections", "5"], &[]));
    assert!(line.contains("did you mean `--max-connections`?"), "{line}");
    let line = assert_usage_error(&run_roostd(&["token", "--sub", "x", "--reed", "*"], &[("ROOSTD_SECRET", SECRET)]));
    assert!(line.contains("did you mean `--read`?") && line.contains("roostd token --help"), "{line}");
}

#[test]
fn the_unknown_command_message_lists_every_command() {
    let line = assert_usage_error(&run_roostd(&["frobnicate"], &[]));
    for cmd in ["serve", "token", "backup", "cert"] {
        assert!(line.contains(cmd), "{cmd} missing from: {line}");
    }
    let line = assert_usage_error(&run_roostd(&["cer"], &[]));
    assert!(line.contains("did you mean `roostd cert`?"), "{line}");
}

/// `roostd serve --config FILE` with `toml` in FILE: the one-line usage error.
#[track_caller]
fn serve_config_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roostd.toml");
    std::fs::write(&file, toml).unwrap();
    assert_usage_error(&run_roostd(&["serve", "--config", file.to_str().unwrap()], &[]))
}

#[test]
fn a_mistyped_config_key_is_echoed_as_typed_with_the_nearest_key() {
    let line = serve_config_error("max_mesage_bytes = 5\n");
    assert!(line.contains("`max_mesage_bytes` (did you mean `max_message_bytes`?)"), "{line}");
}

#[test]
fn a_retention_table_with_one_bracket_says_to_write_two() {
    let line = serve_config_error("[retention]\npattern = \"sensor:*\"\nmessages = 50\n");
    assert!(line.contains("`[[retention]]`"), "{line}");
    assert!(!line.contains("string, number or boolean"), "{line}");
}

#[test]
fn listen_accepts_a_host_name() {
    let server = TestServer::start(&["--listen", "localhost:0"]);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let mut c = server.ws(&token_all("alice"));
    assert_eq!(c.publish("room:1", json!("by name")), 1);
}

#[test]
fn the_ready_file_holds_the_address_the_server_logs_and_answers_on() {
    // The harness passes `--listen 127.0.0.1:0 --ready-file`: the port is the
    // kernel's choice, known only from the server.
    let server = TestServer::start(&[]);
    let text = std::fs::read_to_string(server.ready_file()).unwrap();
    let addr: std::net::SocketAddr = text.strip_suffix('\n').unwrap_or_else(|| panic!("{text:?}")).parse().unwrap();
    assert_ne!(addr.port(), 0, "{text:?}");
    let logged = format!("listening on {addr} ");
    assert!(server.log().contains(&logged), "the log names another address than {text:?}:\n{}", server.log());
    let mut tmp = server.ready_file().into_os_string();
    tmp.push(".tmp");
    assert!(!std::path::Path::new(&tmp).exists(), "the temp file was renamed into place");
    let mut sock = std::net::TcpStream::connect(addr).expect("connecting to the ready file's address");
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    std::io::Write::write_all(&mut sock, b"GET /healthz HTTP/1.1\r\nHost: roostd.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut sock).status, 200);
}

#[test]
fn a_ready_file_that_cannot_be_written_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("no-such-folder").join("ready");
    let config = dir.path().join("roostd.toml");
    std::fs::write(&config, format!("ready_file = {:?}\n", ready.to_str().unwrap())).unwrap();
    let data = dir.path().join("data");
    let args =
        ["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()];
    let out = run_roostd(&args, &[("ROOSTD_SECRET", SECRET)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot write the ready file {}", ready.display())), "{}", stderr(&out));
}

#[test]
fn a_serve_that_cannot_listen_creates_no_data_folder_and_no_secret() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_roostd(&["serve", "--listen", &addr, "--data", data.to_str().unwrap()], &[]);
    let line = assert_usage_error(&out);
    assert!(line.contains("another program uses that port"), "{line}");
    assert!(!data.exists(), "{} was created by a serve that never listened", data.display());
    assert!(!stderr(&out).contains("mint a first token"), "{}", stderr(&out));
}

#[test]
fn top_level_help_is_short_and_serve_help_lists_the_file_only_settings() {
    let top = stdout(&run_roostd(&["--help"], &[]));
    assert!(top.lines().count() <= 30, "`roostd --help` is a page, not the whole serve help:\n{top}");
    assert!(top.contains("roostd COMMAND --help"), "{top}");
    assert!(!top.contains("[default:"), "per-flag details belong to `roostd serve --help`:\n{top}");
    let serve = stdout(&run_roostd(&["serve", "--help"], &[]));
    for table in ["[[retention]]", "[[keys]]"] {
        assert!(serve.contains(table), "`roostd serve --help` does not mention {table}:\n{serve}");
    }
}

#[test]
fn a_token_that_grants_nothing_is_minted_with_a_warning() {
    let env = [("ROOSTD_SECRET", SECRET)];
    let out = run_roostd(&["token", "--sub", "bob"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "the token is still printed");
    assert!(stderr(&out).contains("grants nothing") && stderr(&out).contains("--read"), "{}", stderr(&out));
    let out = run_roostd(&["token", "--sub", "bob", "--read", "room:*"], &env);
    assert!(!stderr(&out).contains("grants nothing"), "{}", stderr(&out));
}

#[test]
fn roostd_token_names_the_url_of_the_server_its_settings_describe() {
    let env = [("ROOSTD_SECRET", SECRET)];
    let out = run_roostd(&["token", "--sub", "a", "--read", "*"], &env);
    assert!(stderr(&out).contains("ws://127.0.0.1:8080/ws?token="), "{}", stderr(&out));
    let tls = ["--listen", "0.0.0.0:8443", "--tls-cert", "c.pem", "--tls-key", "k.pem"];
    let out = run_roostd(&[&["token", "--sub", "a", "--read", "*"][..], &tls].concat(), &env);
    assert!(stderr(&out).contains("wss://<host>:8443/ws?token="), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roostd.toml");
    std::fs::write(&file, "listen = \"localhost:9001\"\n").unwrap();
    let out = run_roostd(&["token", "--sub", "a", "--read", "*", "--config", file.to_str().unwrap()], &env);
    assert!(stderr(&out).contains("ws://localhost:9001/ws?token="), "{}", stderr(&out));
}

#[test]
fn the_first_run_hint_is_a_command_that_works_when_pasted() {
    let server = TestServer::options().no_secret().start();
    let log = server.log_when("mint a first token with: ");
    let hint = log.lines().find_map(|l| l.split_once("mint a first token with: ")).map(|(_, cmd)| cmd.to_string());
    let hint = hint.unwrap_or_else(|| panic!("no first-token hint in:\n{log}"));
    // The words of the hint as a shell would split them (it quotes only '*').
    let words: Vec<String> = hint.split_whitespace().map(|w| w.replace('\'', "")).collect();
    let program = std::path::Path::new(&words[0]);
    assert!(words[0] == "roostd" || program.is_file(), "the hint starts with a program that exists: {hint}");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let out = run_roostd(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{hint}: {}", stderr(&out));
    let mut c = server.ws(stdout(&out).trim());
    assert_eq!(c.publish("room:1", json!("hello")), 1);
}
