//! Admission: accepting sockets within the total and per-address limits
//! (counted at accept, idle sockets included), and the rate-limited log of
//! what was refused.

use super::*;

impl Server {
    pub(super) fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() || self.stopping.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else { return };
            let (mut sock, addr) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    // Edge-triggered: no new event will come for the
                    // backlog, so come back on a timer and drain it then.
                    log::warn!("out of file descriptors ({e}); pausing accept for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            };
            if self.slots.len() >= self.max_connections + REFUSAL_HEADROOM {
                // Not even room to answer 503: close at once.
                drop(sock);
                continue;
            }
            // One address may not hold more than its share of sockets, idle
            // ones included: counted here, at accept, not only at upgrade, or
            // one host could fill every slot with sockets that never send a
            // byte. A few past its limit are still read, so their requests
            // are answered in the contract's order (404 before 503).
            let from_ip = self.per_ip.get(&addr.ip()).copied().unwrap_or(0);
            if from_ip >= self.cfg.max_connections_per_ip.saturating_add(PER_IP_REFUSAL_HEADROOM) {
                self.metrics.refuse("server_full");
                self.log_refusal(now, addr.ip(), &"too many connections from this address");
                if self.tls.is_none() {
                    // Best effort, on a fresh socket whose buffer is empty:
                    // a plain client learns why; a TLS one just sees the close.
                    let _ = io::Write::write(&mut sock, &Refusal::new(503, "server_full").response(true));
                }
                continue;
            }
            let _ = sock.set_nodelay(true);
            let Some(id) = self.slots.vacant_id(self.next_id) else { continue };
            self.next_id += 1;
            if let Err(e) = self.poll.registry().register(&mut sock, Token(id), Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("cannot register a connection: {e}");
                continue;
            }
            let stream = match &self.tls {
                None => Stream::Plain(sock),
                Some(config) => match Stream::tls(sock, config.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("cannot start TLS for a connection: {e}");
                        continue;
                    }
                },
            };
            // Counted only once the connection exists: `remove` gives it back.
            *self.per_ip.entry(addr.ip()).or_default() += 1;
            let conn = Conn::new(stream, addr.ip(), now, self.conn_settings.clone());
            self.slots.insert(id, Slot::new(conn));
            self.metrics.accepted += 1;
            self.schedule(id);
            // Data may have arrived with the connection.
            self.on_readable(id, now);
        }
    }

    /// Logs a refused connection at debug, at most `REFUSAL_LOGS_PER_SEC`
    /// a second: refusals are what an attacker makes by the thousand, and
    /// the log (an SD card, journald) must not be the thing that gives out.
    /// The metrics count every one.
    pub(super) fn log_refusal(&mut self, now: Instant, ip: IpAddr, why: &dyn std::fmt::Display) {
        let budget = &mut self.refusal_log;
        if now.saturating_duration_since(budget.since) >= Duration::from_secs(1) {
            if budget.dropped > 0 {
                log::debug!("... and {} more refused connections in the last second", budget.dropped);
            }
            *budget = RefusalLog { since: now, logged: 0, dropped: 0 };
        }
        if budget.logged < REFUSAL_LOGS_PER_SEC {
            budget.logged += 1;
            log::debug!("refused a connection from {ip}: {why}");
        } else {
            if budget.dropped == 0 {
                log::debug!("more refusals this second are counted in /metrics, not logged");
            }
            budget.dropped += 1;
        }
    }
}
