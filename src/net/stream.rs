//! The byte stream under HTTP and WebSocket: plain TCP or TLS (rustls),
//! and `Transport`, the little `Conn` needs of a stream beyond `Read + Write`.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::mem;
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};

/// What `Conn` needs of its byte stream beyond reading and writing. `Stream`
/// is the real one; `Conn`'s tests drive it with a scripted one in memory,
/// so its phases, queue and deadlines are tested without a socket or a sleep.
pub trait Transport: io::Read + io::Write {
    /// Writes out bytes the transport itself still holds (TLS records),
    /// until done or WouldBlock.
    fn push(&mut self) -> io::Result<()>;
    /// Ends our side of the connection (after a refusal, or after the Close
    /// of a failed WebSocket).
    fn shutdown_write(&mut self);
    /// True when a read that filled less than the buffer means the source
    /// is empty for now, so reading again before the next readiness event
    /// would only say WouldBlock. True of a TCP socket; not of TLS, where
    /// a short read may leave decrypted bytes a small buffer had no room for.
    fn short_read_empties(&self) -> bool;
}

/// The byte stream under HTTP and WebSocket: plain TCP, or TLS over it.
/// TLS runs non-blocking here: its reads and writes return WouldBlock like
/// the socket's, and `flush` pushes out TLS records the socket did not take.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

impl Stream {
    pub fn tls(sock: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(Tls::new(conn, sock))))
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
            Stream::Tls(t) => t.push(),
        }
    }

    /// Ends our side: a TLS close_notify first, then the TCP FIN.
    fn shutdown_write(&mut self) {
        if let Stream::Tls(t) = self {
            t.send_close_notify();
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

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(&[IoSlice::new(buf)]),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(t) => t.write(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.push(),
        }
    }
}

/// The most a TLS record takes on the wire: 16 KiB of plaintext, 2 KiB of
/// expansion rustls accepts (TLS 1.2's limit), the 5-byte header.
const RECORD_MAX: usize = 16 * 1024 + 2048 + 5;

/// The most ciphertext a connection carries between reads. Only a handshake
/// message split over records comes near it (rustls refuses one above
/// 64 KiB); a client sending it in tiny records would pay a header per
/// byte, so this is a bound on memory, not a limit any real client meets.
const HELD_MAX: usize = 2 * 64 * 1024;

/// Plaintext one write encrypts at most: the rest of a bigger frame waits
/// in `Conn`'s queue for the next write, as with a plain socket.
const WRITE_MAX: usize = 64 * 1024;

thread_local! {
    // The loop's one thread reads every TLS socket into this and encrypts
    // into the other: ciphertext lives in them only for the length of one
    // call, so a connection between calls owns no TLS buffer.
    static CIPHERTEXT_IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static CIPHERTEXT_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A server TLS connection over rustls' unbuffered API, where the caller
/// owns the buffers. rustls' buffered `ServerConnection` keeps a 4 KiB
/// read buffer for the connection's life; here records are read into a
/// buffer shared by all connections and only what is left unfinished —
/// part of a record, a handshake message split over records — is kept,
/// boxed on demand and dropped once used, as plain connections do.
pub struct Tls {
    conn: UnbufferedServerConnection,
    sock: TcpStream,
    /// What is unfinished between calls; `None` — nothing allocated — for
    /// an idle connection.
    spill: Option<Box<Spill>>,
    /// The peer's close_notify came (or its EOF): reads return 0.
    read_closed: bool,
    /// rustls failed the connection (a bad record, a bad handshake): its
    /// offsets into `held` are void, so it is not asked again.
    failed: bool,
}

/// A TLS connection's bytes between calls, each buffer allocated on demand
/// and freed once empty.
#[derive(Default)]
struct Spill {
    /// Ciphertext carried from one read to the next. Kept byte for byte:
    /// rustls refers to a handshake message in progress by its offsets here.
    held: Vec<u8>,
    /// Decrypted bytes the reader's buffer had no room for: `plain[plain_pos..]`.
    /// Only HTTP's small reads leave any (a WebSocket reads 64 KiB bites).
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS records the socket did not take yet: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.held.capacity() + self.plain.capacity() + self.out.capacity() == 0
    }

    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let left = &self.plain[self.plain_pos..];
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            (self.plain, self.plain_pos) = (Vec::new(), 0);
        }
        n
    }
}

/// What rustls said once it went through the ciphertext it was given.
enum Step {
    /// It needs more bytes from the peer.
    NeedMore,
    /// The peer sent close_notify.
    PeerClosed,
}

impl Tls {
    fn new(conn: UnbufferedServerConnection, sock: TcpStream) -> Tls {
        Tls { conn, sock, spill: None, read_closed: false, failed: false }
    }

    /// Bytes this connection keeps between calls (ciphertext in and out,
    /// plaintext not yet read): 0 for an idle connection.
    pub fn buffered_bytes(&self) -> usize {
        self.spill
            .as_ref()
            .map_or(0, |sp| mem::size_of::<Spill>() + sp.held.capacity() + sp.plain.capacity() + sp.out.capacity())
    }

    /// Runs `f` with the connection's `Spill` (an empty one if it has none)
    /// and keeps it only if something is left in it.
    fn with_spill<R>(&mut self, f: impl FnOnce(&mut Tls, &mut Spill) -> R) -> R {
        match self.spill.take() {
            Some(mut sp) => {
                let r = f(self, &mut sp);
                if !sp.is_empty() {
                    self.spill = Some(sp);
                }
                r
            }
            None => {
                let mut sp = Spill::default();
                let r = f(self, &mut sp);
                if !sp.is_empty() {
                    self.spill = Some(Box::new(sp));
                }
                r
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with_spill(|t, sp| t.read_with(sp, buf))
    }

    fn write(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.with_spill(|t, sp| t.write_with(sp, bufs))
    }

    /// Writes out the TLS records the socket did not take yet.
    fn push(&mut self) -> io::Result<()> {
        self.with_spill(|t, sp| t.push_with(sp))
    }

    /// Queues a close_notify and writes it out, best effort: the connection
    /// ends right after.
    fn send_close_notify(&mut self) {
        self.with_spill(|t, sp| t.close_notify_with(sp))
    }

    fn read_with(&mut self, sp: &mut Spill, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if sp.plain_pos < sp.plain.len() {
            return Ok(sp.take_plain(buf));
        }
        if self.failed {
            return Err(failed());
        }
        if self.read_closed {
            return Ok(0);
        }
        let mut work = CIPHERTEXT_IN.with_borrow_mut(mem::take);
        // What is held goes first; the socket's bytes follow it.
        let mut filled = sp.held.len();
        if work.len() < filled + RECORD_MAX {
            work.resize(filled + RECORD_MAX, 0);
        }
        work[..filled].copy_from_slice(&sp.held);
        let res = self.read_into(sp, &mut work, &mut filled, buf);
        if filled == 0 || self.failed {
            sp.held = Vec::new();
        } else if sp.held[..] != work[..filled] {
            sp.held = work[..filled].to_vec();
        }
        CIPHERTEXT_IN.with_borrow_mut(|spare| {
            if spare.len() < work.len() {
                *spare = work;
            }
        });
        res
    }

    /// Reads the socket into `work[filled..]` and runs rustls over it until
    /// some plaintext is in `buf`, the socket is empty, or the peer closed.
    fn read_into(
        &mut self,
        sp: &mut Spill,
        work: &mut Vec<u8>,
        filled: &mut usize,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let mut got = 0;
        loop {
            match self.process(sp, work, filled, buf, &mut got)? {
                Step::PeerClosed => {
                    self.read_closed = true;
                    return Ok(got);
                }
                Step::NeedMore if got > 0 => return Ok(got),
                Step::NeedMore => {}
            }
            if *filled > HELD_MAX {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS: more than 128 KiB of unfinished records"));
            }
            // No more than the reader can take (a TLS record's worth at
            // least): an HTTP head read 2 KiB at a time must not pull in
            // 64 KiB that would then wait, decrypted, in `plain`.
            let want = buf.len().max(RECORD_MAX);
            if work.len() < *filled + want {
                work.resize(*filled + want, 0);
            }
            match self.sock.read(&mut work[*filled..*filled + want]) {
                Ok(0) => {
                    self.read_closed = true;
                    // As rustls' own reader says: an EOF without close_notify
                    // may be a truncation.
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "TLS peer closed without close_notify"));
                }
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs rustls over `work[..filled]`: handshake records it answers go to
    /// the socket, application data into `buf` (what does not fit, into
    /// `plain`), and what it is done with is cut from the front of `work`.
    fn process(
        &mut self,
        sp: &mut Spill,
        work: &mut [u8],
        filled: &mut usize,
        buf: &mut [u8],
        got: &mut usize,
    ) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut work[..*filled]);
            let step = match state {
                Ok(ConnectionState::ReadTraffic(mut data)) => {
                    while let Some(record) = data.next_record() {
                        let record = record.map_err(|e| {
                            self.failed = true;
                            invalid(e)
                        })?;
                        discard += record.discard;
                        let n = record.payload.len().min(buf.len() - *got);
                        buf[*got..*got + n].copy_from_slice(&record.payload[..n]);
                        *got += n;
                        sp.plain.extend_from_slice(&record.payload[n..]);
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut hs)) => {
                    append_record(&mut sp.out, |b| hs.encode(b))?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(hs)) => {
                    hs.done();
                    match push_out(&mut self.sock, &mut sp.out, &mut sp.out_pos) {
                        Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                        // What the socket did not take goes at the next flush.
                        _ => None,
                    }
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => Some(Step::NeedMore),
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Step::PeerClosed),
                Ok(_) => return Err(io::Error::other("TLS: a state roostd does not handle (early data?)")),
                Err(e) => {
                    self.failed = true;
                    self.send_alert(sp, &mut work[..*filled]);
                    return Err(invalid(e));
                }
            };
            work.copy_within(discard..*filled, 0);
            *filled -= discard;
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// After an error, the alert rustls queued for the peer (bad_record_mac,
    /// decode_error…): sent if the socket takes it, as the buffered
    /// connection did.
    fn send_alert(&mut self, sp: &mut Spill, work: &mut [u8]) {
        if let Ok(ConnectionState::EncodeTlsData(mut alert)) = self.conn.process_tls_records(work).state {
            if append_record(&mut sp.out, |b| alert.encode(b)).is_ok() {
                let _ = push_out(&mut self.sock, &mut sp.out, &mut sp.out_pos);
            }
        }
    }

    fn push_with(&mut self, sp: &mut Spill) -> io::Result<()> {
        push_out(&mut self.sock, &mut sp.out, &mut sp.out_pos)
    }

    /// Encrypts `bufs` in order (up to `WRITE_MAX`) and writes the records;
    /// what the socket does not take waits in `out`, and until it is
    /// written, writes say WouldBlock, as a full socket does.
    fn write_with(&mut self, sp: &mut Spill, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.failed {
            return Err(failed());
        }
        self.push_with(sp)?;
        let mut enc = CIPHERTEXT_OUT.with_borrow_mut(mem::take);
        let res = self.encrypt(sp, bufs, &mut enc).and_then(|(taken, used)| {
            // Straight from the shared buffer to the socket; only what the
            // socket does not take is copied into the connection's own.
            let mut pos = 0;
            match write_all_or_block(&mut self.sock, &enc[..used], &mut pos) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                _ => {
                    if pos < used {
                        (sp.out, sp.out_pos) = (enc[pos..used].to_vec(), 0);
                    }
                    Ok(taken)
                }
            }
        });
        CIPHERTEXT_OUT.with_borrow_mut(|spare| {
            if spare.len() < enc.len() {
                *spare = enc;
            }
        });
        res
    }

    /// Encrypts into `enc`: returns the plaintext bytes taken and the
    /// ciphertext bytes made. Handshake records rustls has queued (a key
    /// update, a session ticket) go first, in order.
    fn encrypt(&mut self, sp: &mut Spill, bufs: &[IoSlice<'_>], enc: &mut Vec<u8>) -> io::Result<(usize, usize)> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut sp.held);
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let mut taken = 0;
                    for b in bufs.iter().filter(|b| !b.is_empty()) {
                        let b = &b[..b.len().min(WRITE_MAX - taken)];
                        encrypt_into(&mut w, b, enc, &mut used)?;
                        taken += b.len();
                        if taken == WRITE_MAX {
                            break;
                        }
                    }
                    Some(taken)
                }
                Ok(ConnectionState::EncodeTlsData(mut hs)) => {
                    used = encode(enc, used, |b| hs.encode(b))?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(hs)) => {
                    hs.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    // Said here, so not to `read`: it ends reading.
                    self.read_closed = true;
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Ok(_) => return Err(io::Error::other("TLS: records came in while writing")),
                Err(e) => {
                    self.failed = true;
                    return Err(invalid(e));
                }
            };
            sp.held.drain(..discard);
            if let Some(taken) = done {
                return Ok((taken, used));
            }
        }
    }

    fn close_notify_with(&mut self, sp: &mut Spill) {
        if self.failed {
            return;
        }
        if let Ok(ConnectionState::WriteTraffic(mut w)) = self.conn.process_tls_records(&mut sp.held).state {
            let at = sp.out.len();
            let mut need = 64;
            loop {
                sp.out.resize(at + need, 0);
                match w.queue_close_notify(&mut sp.out[at..]) {
                    Ok(n) => break sp.out.truncate(at + n),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                        if required_size > need =>
                    {
                        need = required_size
                    }
                    Err(_) => break sp.out.truncate(at),
                }
            }
        }
        let _ = self.push_with(sp);
    }
}

/// Encrypts `data` into `enc[used..]`, growing `enc` to what rustls asks.
fn encrypt_into(
    w: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    data: &[u8],
    enc: &mut Vec<u8>,
    used: &mut usize,
) -> io::Result<()> {
    // A 16 KiB record costs at most 29 bytes more (TLS 1.2's nonce, tag
    // and header); a guess big enough that the retry below is rare.
    let mut need = data.len() + (data.len() / (16 * 1024) + 1) * 64;
    loop {
        if enc.len() < *used + need {
            enc.resize(*used + need, 0);
        }
        match w.encrypt(data, &mut enc[*used..]) {
            Ok(n) => {
                *used += n;
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => need = required_size,
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Puts a handshake record at `out[at..]`, growing `out` to what rustls
/// asks; returns where the record ends.
fn encode(
    out: &mut Vec<u8>,
    at: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<usize> {
    let mut need = 0;
    loop {
        if out.len() < at + need {
            out.resize(at + need, 0);
        }
        match encode(&mut out[at..]) {
            Ok(n) => return Ok(at + n),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > need => {
                need = required_size
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Appends a handshake record to `out`, exactly as long as it is.
fn append_record(out: &mut Vec<u8>, f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> io::Result<()> {
    let at = out.len();
    let end = encode(out, at, f)?;
    out.truncate(end);
    Ok(())
}

/// Writes `out[pos..]` until done or WouldBlock; frees `out` once written.
fn push_out(sock: &mut TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    write_all_or_block(sock, out, pos)?;
    (*out, *pos) = (Vec::new(), 0);
    Ok(())
}

/// Writes `bytes[pos..]` until done or WouldBlock, advancing `pos`.
fn write_all_or_block(sock: &mut TcpStream, bytes: &[u8], pos: &mut usize) -> io::Result<()> {
    while *pos < bytes.len() {
        match sock.write(&bytes[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "TLS: the connection failed earlier")
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    //! `Tls` over a real loopback socket against rustls' client: what a
    //! connection keeps between reads, and reads that do not line up with
    //! records.
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::net::TcpListener;
    use std::thread;
    use std::time::{Duration, Instant};

    type Client = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

    /// A server config with a fresh self-signed certificate, and a client
    /// config trusting exactly it.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
        max_fragment_size: Option<usize>,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = crate::tls::self_signed(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, &made.cert_pem).unwrap();
        std::fs::write(&k, &made.key_pem).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(made.cert_pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.max_fragment_size = max_fragment_size;
        (crate::tls::load(&c, &k).unwrap(), Arc::new(client))
    }

    /// A `Tls` on the server side of a loopback connection; `client` runs
    /// on the other side in its own thread with a blocking rustls client.
    fn pair(client: impl FnOnce(Client) + Send + 'static) -> (Box<Tls>, thread::JoinHandle<()>) {
        pair_over(&rustls::version::TLS13, None, client)
    }

    /// `pair` over `version`, the client's records at most `max_fragment_size`.
    fn pair_over(
        version: &'static rustls::SupportedProtocolVersion,
        max_fragment_size: Option<usize>,
        client: impl FnOnce(Client) + Send + 'static,
    ) -> (Box<Tls>, thread::JoinHandle<()>) {
        let (server, config) = configs(version, max_fragment_size);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            sock.set_nodelay(true).unwrap();
            socket2::SockRef::from(&sock).set_recv_buffer_size(16 * 1024).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            client(rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), sock));
        });
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        // Small, so that a megabyte does not fit the socket.
        socket2::SockRef::from(&sock).set_send_buffer_size(16 * 1024).unwrap();
        let Ok(Stream::Tls(tls)) = Stream::tls(TcpStream::from_std(sock), server) else { panic!("no TLS stream") };
        (tls, t)
    }

    /// Reads into `chunk`-byte buffers until `want` bytes came, waiting out
    /// WouldBlock as the poller would.
    fn read_n(tls: &mut Tls, want: usize, chunk: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut got, mut buf) = (Vec::new(), vec![0u8; chunk]);
        while got.len() < want {
            match tls.read(&mut buf) {
                Ok(0) => panic!("EOF after {} of {want} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    let _ = tls.push();
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("reading: {e}"),
            }
        }
        got
    }

    fn write_all(tls: &mut Tls, mut bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bytes.is_empty() || tls.push().is_err() {
            match tls.write(&[IoSlice::new(bytes)]) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("writing: {e}"),
            }
        }
    }

    #[test]
    fn an_idle_tls_connection_keeps_no_buffer_after_a_message_each_way() {
        ping_pong_then_idle(&rustls::version::TLS13);
    }

    #[test]
    fn an_idle_tls_1_2_connection_keeps_no_buffer_after_a_message_each_way() {
        ping_pong_then_idle(&rustls::version::TLS12);
    }

    fn ping_pong_then_idle(version: &'static rustls::SupportedProtocolVersion) {
        let (mut tls, t) = pair_over(version, None, move |mut c| {
            c.write_all(b"ping").unwrap();
            let mut pong = [0u8; 4];
            c.read_exact(&mut pong).unwrap();
            assert_eq!(&pong, b"pong");
            assert_eq!(c.conn.protocol_version(), Some(version.version));
            // Held open until the server closes.
            let _ = c.read(&mut [0u8; 1]);
        });
        assert_eq!(read_n(&mut tls, 4, 64 * 1024), b"ping");
        write_all(&mut tls, b"pong");
        assert_eq!(tls.buffered_bytes(), 0, "an idle connection holds TLS bytes");
        Stream::Tls(tls).shutdown_write();
        t.join().unwrap();
    }

    #[test]
    fn records_split_over_many_reads_and_read_in_small_pieces_arrive_whole() {
        // 100 KiB: seven records, sent a few hundred bytes at a time so
        // that reads end inside records; read 1 KiB at a time so that a
        // record's plaintext does not fit the reader's buffer.
        let message: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sent = message.clone();
        let (mut tls, t) = pair(move |mut c| {
            while c.conn.is_handshaking() {
                c.conn.complete_io(&mut c.sock).unwrap();
            }
            for part in sent.chunks(16 * 1024) {
                c.conn.writer().write_all(part).unwrap();
                trickle_out(&mut c, 300);
            }
            let _ = c.read(&mut [0u8; 1]);
        });
        let mut seen_held = false;
        let mut got = Vec::new();
        while got.len() < message.len() {
            got.extend(read_n(&mut tls, 1, 1024));
            seen_held |= tls.spill.as_ref().is_some_and(|sp| !sp.held.is_empty() || sp.plain_pos < sp.plain.len());
        }
        assert!(got == message, "the bytes differ");
        assert!(seen_held, "no read ended inside a record or left plaintext over");
        assert_eq!(tls.buffered_bytes(), 0);
        Stream::Tls(tls).shutdown_write();
        t.join().unwrap();
    }

    #[test]
    fn a_megabyte_written_to_a_slow_reader_goes_out_whole_and_the_buffer_is_freed() {
        let message: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let expected = message.clone();
        let (mut tls, t) = pair(move |mut c| {
            let mut got = vec![0u8; expected.len()];
            thread::sleep(Duration::from_millis(100));
            c.read_exact(&mut got).unwrap();
            assert!(got == expected, "the bytes differ");
            let _ = c.read(&mut [0u8; 1]);
        });
        // The handshake first, as a server reads before it answers.
        let _ = read_n_or_block(&mut tls);
        let mut rest = &message[..];
        let mut saw_pending = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rest.is_empty() {
            match tls.write(&[IoSlice::new(rest)]) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    saw_pending |= tls.buffered_bytes() > 0;
                    let _ = read_n_or_block(&mut tls);
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("writing: {e}"),
            }
        }
        write_all(&mut tls, b"");
        assert!(saw_pending, "the socket took a megabyte at once: nothing was tested");
        assert_eq!(tls.buffered_bytes(), 0);
        Stream::Tls(tls).shutdown_write();
        t.join().unwrap();
    }

    /// Sends what the client has to send `piece` bytes at a time, with a
    /// pause after each: the server's reads end inside records.
    fn trickle_out(c: &mut Client, piece: usize) {
        let mut wire = Vec::new();
        while c.conn.wants_write() {
            c.conn.write_tls(&mut wire).unwrap();
        }
        for piece in wire.chunks(piece) {
            c.sock.write_all(piece).unwrap();
            thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn a_handshake_in_64_byte_records_sent_50_bytes_at_a_time_completes() {
        // Each handshake message of the client spans several records, and
        // reads end inside them: rustls joins the pieces by their offsets
        // in the bytes the connection holds between reads.
        let message: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
        let sent = message.clone();
        let (mut tls, t) = pair_over(&rustls::version::TLS13, Some(64), move |mut c| {
            while c.conn.is_handshaking() {
                trickle_out(&mut c, 50);
                if c.conn.is_handshaking() {
                    c.conn.read_tls(&mut c.sock).unwrap();
                    c.conn.process_new_packets().unwrap();
                }
            }
            c.conn.writer().write_all(&sent).unwrap();
            trickle_out(&mut c, 50);
            let mut ok = [0u8; 2];
            c.read_exact(&mut ok).unwrap();
            assert_eq!(&ok, b"ok");
            let _ = c.read(&mut [0u8; 1]);
        });
        assert!(read_n(&mut tls, message.len(), 64 * 1024) == message, "the bytes differ");
        write_all(&mut tls, b"ok");
        assert_eq!(tls.buffered_bytes(), 0);
        Stream::Tls(tls).shutdown_write();
        t.join().unwrap();
    }

    /// One read (which drives the handshake), ignoring WouldBlock.
    fn read_n_or_block(tls: &mut Tls) -> io::Result<usize> {
        tls.read(&mut [0u8; 1024])
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_an_error_and_leaves_nothing_held() {
        let (server, _) = configs(&rustls::version::TLS13, None);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
        c.write_all(&[0u8; 16]).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let Ok(Stream::Tls(mut tls)) = Stream::tls(TcpStream::from_std(sock), server) else { panic!("no TLS stream") };
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            match tls.read(&mut [0u8; 1024]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => break e,
                Ok(n) => panic!("garbage read as {n} bytes"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(tls.write(&[IoSlice::new(b"x")]).is_err(), "a failed connection took a write");
        assert!(tls.spill.as_ref().is_none_or(|sp| sp.held.capacity() + sp.plain.capacity() == 0));
        Stream::Tls(tls).shutdown_write();
        // The alert rustls queued reached the client.
        let mut alert = [0u8; 7];
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.read_exact(&mut alert).unwrap();
        assert_eq!(alert[0], 0x15, "{alert:?}");
    }
}
