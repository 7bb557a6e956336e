//! systemd's readiness protocol (`sd_notify`), by hand: with `Type=notify`
//! systemd starts the units ordered after roostd, and reports it started,
//! only once roostd says `READY=1`, that is once its port accepts
//! connections, not merely once the process exists.
//!
//! systemd passes the socket in `NOTIFY_SOCKET`: a path, or an abstract
//! name written with a leading `@`. Each message is one datagram of
//! `KEY=VALUE` lines. Without the variable (not under systemd) every call
//! does nothing. A failed send is logged and otherwise ignored: readiness
//! is a courtesy to the service manager, never a reason to stop serving
//! (systemd itself fails the start after `TimeoutStartSec=` if it heard
//! nothing).

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;

/// Says the server listens on `addr` (`READY=1` and a status line).
pub fn ready(addr: SocketAddr) {
    send_logged(&format!("READY=1\nSTATUS=listening on {addr}\n"));
}

/// Says the server is stopping (`STOPPING=1`).
pub fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping\n");
}

fn send_logged(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&target.to_string_lossy(), state) {
        log::warn!("cannot notify systemd through NOTIFY_SOCKET={}: {e}", target.to_string_lossy());
    }
}

/// Sends `state` as one datagram to `target`: a socket path, or `@name`
/// for a Linux abstract socket (systemd's choice since version 254).
pub fn send(target: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        return send_abstract(&sock, name, state);
    }
    if !target.starts_with('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path or an @abstract name"));
    }
    let n = sock.send_to(state.as_bytes(), target)?;
    whole(n, state)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &str, state: &str) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let n = sock.send_to_addr(state.as_bytes(), &addr)?;
    whole(n, state)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names exist only on Linux"))
}

fn whole(n: usize, state: &str) -> io::Result<()> {
    if n == state.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "the datagram was cut short"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_socket_receives_the_state_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_name_with_an_at_sign_receives_the_state() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("roostd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn a_relative_target_is_refused_not_sent() {
        let e = send("notify.sock", "READY=1\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
