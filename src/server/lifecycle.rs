//! Signals and the server's end: SIGHUP reloads the certificate; SIGTERM
//! and SIGINT stop accepting, let what was taken reach the disk, close every
//! WebSocket with 1001 and return; a fatal store error closes with 1011.

use super::*;

impl Server {
    pub(super) fn on_signal(&mut self, now: Instant) {
        let mut buf = [0u8; 64];
        while matches!(io::Read::read(&mut self.signals, &mut buf), Ok(n) if n > 0) {}
        if self.stopping.is_none() {
            log::info!("stopping: committing what is pending and closing connections");
            self.stopping = Some(now);
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
    }

    /// SIGHUP: load the certificate and key again. New connections use
    /// them; open ones keep the session they have. A bad file keeps the old.
    pub(super) fn on_reload(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(io::Read::read(&mut self.reload, &mut buf), Ok(n) if n > 0) {}
        let (Some(cert), Some(key)) = (&self.cfg.tls_cert, &self.cfg.tls_key) else {
            log::info!("SIGHUP: no TLS configured, nothing to reload");
            return;
        };
        match crate::tls::load(cert, key) {
            Ok(config) => {
                self.tls = Some(config);
                let fp = crate::tls::file_fingerprint(cert).unwrap_or_default();
                log::info!("SIGHUP: reloaded the certificate {} (SHA-256 {fp})", cert.display());
            }
            Err(e) => log::error!("SIGHUP: kept the old certificate: {e}"),
        }
    }

    pub(super) fn close_all(&mut self, code: u16, reason: &'static str, now: Instant) {
        for (id, slot) in self.slots.iter_mut() {
            slot.conn.close(code, reason, now);
            slot.dirty = true;
            self.dirty.push(*id);
        }
    }

    /// Shutdown in order: stop accepting (done on the signal), let every
    /// publish already taken reach the disk and its ack reach the queue,
    /// then close every WebSocket with 1001 and wait briefly for the peers.
    pub(super) fn advance_shutdown(&mut self, now: Instant) -> Option<Result<Stop, StoreError>> {
        if self.fatal.is_some() {
            let pending = self.slots.values().any(|s| s.conn.phase() != Phase::Closed && s.conn.wants_write());
            if !pending || self.stopping.is_some_and(|t| now.duration_since(t) > Duration::from_secs(1)) {
                return self.fatal.take().map(Err);
            }
            self.stopping.get_or_insert(now);
            return None;
        }
        let since = self.stopping?;
        if self.inflight_bytes > 0 && now.duration_since(since) < SHUTDOWN_GRACE {
            return None;
        }
        // WebSockets get 1001; HTTP connections between requests (a
        // browser's idle keep-alive) or mid-request are simply closed.
        let ending: Vec<ConnId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.conn.phase(), Phase::Open | Phase::Head | Phase::Body | Phase::Draining))
            .map(|(id, _)| *id)
            .collect();
        for id in ending {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.conn.close(code::GOING_AWAY, "server shutting down", now);
                self.mark_dirty(id);
            }
        }
        self.flush_dirty();
        if self.slots.is_empty() || now.duration_since(since) > SHUTDOWN_GRACE {
            for done in self.writer.stop() {
                if let Err(e) = done.result {
                    log::error!("last commit failed: {e}");
                }
            }
            return Some(Ok(Stop::Signal));
        }
        None
    }
}
