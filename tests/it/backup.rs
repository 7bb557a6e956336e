//! `roostd backup FILE` (spec §6): a new file of mode 0600, never through a
//! symlink, holding the same history under a new epoch, so clients that
//! resume against a restored store are told `gap`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};

use serde_json::json;

use crate::support::*;

fn backup(server: &TestServer, file: &std::path::Path) -> std::process::Output {
    run_roostd(&["backup", file.to_str().unwrap(), "--data", server.data_dir().to_str().unwrap()], &[])
}

#[test]
fn a_backup_is_0600_and_a_server_on_it_tells_resuming_clients_gap() {
    let mut live = TestServer::start(&[]);
    let mut ws = live.ws(&token_all("w"));
    let old_epoch = ws.sub("a")["epoch"].clone();
    for i in 0..3 {
        ws.publish("a", json!(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roostd.backup");
    let out = backup(&live, &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "nothing but FILE is written");
    drop(ws);
    assert!(live.terminate().success());

    // Restore: the file as data.mdb in an empty data folder.
    let mut restored = TestServer::start(&[]);
    assert!(restored.terminate().success());
    for f in ["data.mdb", "lock.mdb"] {
        let _ = fs::remove_file(restored.data_dir().join(f));
    }
    fs::copy(&file, restored.data_dir().join("data.mdb")).unwrap();
    restored.start_again();
    let mut ws = restored.ws(&token_all("r"));
    let subok = ws.resume("a", 3, &old_epoch);
    assert_ne!(subok["epoch"], old_epoch, "the copy has a new epoch: {subok}");
    assert_eq!(subok["gap"], true, "{subok}");
    assert_eq!(subok["seq"], 3, "the same history: {subok}");
    let replayed: Vec<_> = (0..3).map(|_| ws.recv_msg()["data"].clone()).collect();
    assert_eq!(replayed, [json!(0), json!(1), json!(2)], "replay starts at the oldest message");
}

#[test]
fn a_backup_never_writes_through_a_symlink_or_over_a_file() {
    let server = TestServer::start(&[]);
    server.ws(&token_all("w")).publish("a", json!(1));
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.mdb");
    symlink(&target, &link).unwrap();
    let dangling = dir.path().join("dangling.mdb");
    symlink(dir.path().join("nowhere"), &dangling).unwrap();
    for file in [&link, &dangling, &target] {
        let out = backup(&server, file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", file.display());
        assert!(err.contains("give a new file name"), "the message says what to do: {err}");
    }
    assert_eq!(fs::read(&target).unwrap(), b"keep me", "the symlink's target is untouched");
    assert!(!dir.path().join("nowhere").exists(), "nothing is created through a dangling symlink");
}
