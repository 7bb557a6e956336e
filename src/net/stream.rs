//! The byte stream under HTTP and WebSocket: plain TCP or TLS (rustls),
//! and `Transport`, the little `Conn` needs of a stream beyond `Read + Write`.

use std::io::{self, IoSlice};
use std::net::Shutdown;

use mio::net::TcpStream;

/// What `Conn` needs of its byte stream beyond reading and writing. `Stream`
/// is the real one; `Conn`'s tests drive it with a scripted one in memory,
/// so its phases, queue and deadlines are tested without a socket or a sleep.
pub trait Transport: io::Read + io::Write {
    /// Writes out bytes the transport itself still holds (TLS records),
    /// until done or WouldBlock. Write-only: see `push_tls`.
    fn push(&mut self) -> io::Result<()>;
    /// Ends our side of the connection (after a refusal, or after the Close
    /// of a failed WebSocket).
    fn shutdown_write(&mut self);
    /// True when a read that filled less than the buffer means the source
    /// is empty for now, so reading again before the next readiness event
    /// would only say WouldBlock. True of a TCP socket; not of TLS, where
    /// rustls may hold decrypted bytes a short read left.
    fn short_read_empties(&self) -> bool;
}

/// The byte stream under HTTP and WebSocket: plain TCP, or TLS over it.
/// rustls runs non-blocking here: its reads and writes return WouldBlock
/// like the socket's, and `flush` pushes out TLS records it still holds.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    pub fn tls(sock: TcpStream, config: std::sync::Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }

    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }
}

impl Transport for Stream {
    fn push(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => push_tls(t),
        }
    }

    /// Ends our side: a TLS close_notify first, then the TCP FIN.
    fn shutdown_write(&mut self) {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = push_tls(t);
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }

    fn short_read_empties(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

/// Writes out the TLS records rustls holds, until done or WouldBlock.
///
/// Write-only on purpose: rustls' own `Stream::write`/`flush` may also read
/// from the socket (to finish a handshake), and bytes read there — a
/// request sent together with the client's Finished — would sit decrypted
/// inside rustls with no readable edge ever coming for them.
fn push_tls(t: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) -> io::Result<()> {
    while t.conn.wants_write() {
        match t.conn.write_tls(&mut t.sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => {
                push_tls(t)?;
                // rustls buffers plaintext up to its limit (64 KiB); past it
                // the caller waits for the socket like with plain TCP.
                let n = t.conn.writer().write(buf)?;
                if n == 0 && !buf.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                match push_tls(t) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(n),
                }
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(_) => {
                // rustls takes one buffer at a time; the rest waits for the next round.
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
                self.write(first)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => push_tls(t),
        }
    }
}
