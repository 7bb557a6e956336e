//! tokio-ws-peer: the "usual Rust choice" (tokio + tokio-tungstenite) implementing
//! the peer protocol of `benches/peers/README.md`, so that the same load generator
//! can drive it side by side with roostd (issue #7).
//!
//! * `/echo…` — every text/binary message is sent back unchanged.
//! * `/sub…`  — receives every text message published on `/pub…`; input is ignored.
//! * `/pub…`  — every text message is broadcast to all connected `/sub…` connections.
//! * anything else (e.g. `/idle`) — held open, nothing sent.
//!
//! One thread (`current_thread` runtime), default `WebSocketConfig` (tungstenite has
//! no permessage-deflate), loopback only. Usage: `tokio-ws-peer [PORT]` (default 19100).

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Fan-out queue length. A subscriber more than this many messages behind skips
/// the ones it missed (`RecvError::Lagged`) instead of holding up the publisher.
/// On the one thread, a publisher's messages that arrive in one read are all sent
/// before any subscriber task runs, so a short queue makes every subscriber skip
/// in a burst (seen at 1024 with 2000 back-to-back messages: 1163 arrived). Long
/// enough that the benchmark's bursts never lag: the peer must do all the work.
const BROADCAST_CAPACITY: usize = 1 << 16;

#[derive(Clone, Copy)]
enum Role {
    Echo,
    Sub,
    Pub,
    Idle,
}

fn role_of(path: &str) -> Role {
    if path.starts_with("/echo") {
        Role::Echo
    } else if path.starts_with("/sub") {
        Role::Sub
    } else if path.starts_with("/pub") {
        Role::Pub
    } else {
        Role::Idle
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().expect("PORT must be a number"),
        None => 19100,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on 127.0.0.1:{port}");
        std::io::stdout().flush()?;
        // Messages are `Utf8Bytes`-backed, so each subscriber's clone is a refcount bump.
        let (tx, _) = broadcast::channel::<Message>(BROADCAST_CAPACITY);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, tx).await;
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: keep serving the connections we have.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn serve(stream: TcpStream, tx: broadcast::Sender<Message>) -> Result<(), Error> {
    // As roostd, uWS and Node's http server do.
    stream.set_nodelay(true)?;
    let mut role = Role::Idle;
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        role = role_of(req.uri().path());
        Ok(resp)
    })
    .await?;

    // Reading until the stream ends also answers pings and completes the close
    // handshake (tungstenite queues the pong / close reply itself).
    match role {
        Role::Echo => {
            while let Some(msg) = ws.next().await {
                let msg = msg?;
                if msg.is_text() || msg.is_binary() {
                    ws.send(msg).await?;
                }
            }
        }
        Role::Pub => {
            while let Some(msg) = ws.next().await {
                if let Message::Text(text) = msg? {
                    // Err only means there is no subscriber right now.
                    let _ = tx.send(Message::Text(text));
                }
            }
        }
        Role::Sub => {
            let mut rx = tx.subscribe();
            drop(tx);
            loop {
                tokio::select! {
                    incoming = ws.next() => match incoming {
                        Some(msg) => { msg?; }
                        None => break,
                    },
                    published = rx.recv() => match published {
                        Ok(msg) => ws.send(msg).await?,
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                }
            }
        }
        Role::Idle => {
            while let Some(msg) = ws.next().await {
                msg?;
            }
        }
    }
    Ok(())
}
