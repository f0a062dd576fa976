//! A TCP fault proxy for the chaos suite: it sits between the pipeline and one store and, on
//! command, adds latency or cuts connections.
//!
//! This is the one fake in the chaos suite, and it fakes only the network: the servers behind it
//! are real. A real server cannot be asked to delay its packets or to reset a connection in the
//! middle of a request; the proxy can.
//!
//! - `set_latency(d)`: every chunk, in both directions, is delivered `d` after it was read
//!   (a delay, not a bandwidth limit: chunks in flight overlap).
//! - `cut()`: every open connection is reset (SO_LINGER 0, so the peer sees ECONNRESET, not a
//!   clean close) wherever its requests are.
//! - `refuse(true)`: new connections are reset as soon as they are accepted, as when a host is
//!   unreachable.
//! - `silence()`: every open connection stops carrying anything, in both directions, and stays
//!   open (until `cut()` or the proxy's end), as when the server's host is gone without a word:
//!   no reset ever comes. New connections work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

struct State {
    upstream: SocketAddr,
    latency_us: AtomicU64,
    refusing: AtomicBool,
    /// Bumped by `cut()`; every connection watches it.
    cuts: watch::Sender<u64>,
    /// Bumped by `silence()`; every connection watches it.
    silences: watch::Sender<u64>,
    open: AtomicU64,
    accepted: AtomicU64,
    reset: AtomicU64,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
            latency_us: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            silences: watch::channel(0).0,
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            reset: AtomicU64::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared.refusing.load(Ordering::Acquire) {
                    reset(&client);
                    shared.reset.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                tokio::spawn(serve(client, shared.clone()));
            }
        });
        FaultProxy {
            port,
            state,
            accept,
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Release);
    }

    /// Resets every open connection; returns how many were open.
    pub fn cut(&self) -> u64 {
        let open = self.state.open.load(Ordering::Acquire);
        self.state.cuts.send_modify(|n| *n += 1);
        open
    }

    /// Every open connection goes silent; returns how many were open.
    pub fn silence(&self) -> u64 {
        let open = self.state.open.load(Ordering::Acquire);
        self.state.silences.send_modify(|n| *n += 1);
        open
    }

    pub fn refuse(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::Release);
    }

    /// (connections accepted, connections reset by `cut` or `refuse`).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.state.accepted.load(Ordering::Relaxed),
            self.state.reset.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// Deprecated because a non-zero linger blocks the thread on drop; a zero linger never blocks:
// it makes the close a reset.
#[allow(deprecated)]
fn reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn serve(client: TcpStream, state: Arc<State>) {
    let mut cuts = state.cuts.subscribe();
    cuts.mark_unchanged();
    let mut silences = state.silences.subscribe();
    silences.mark_unchanged();
    let Ok(server) = TcpStream::connect(state.upstream).await else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    state.open.fetch_add(1, Ordering::AcqRel);
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let was_cut = tokio::select! {
        _ = async {
            tokio::join!(
                pipe(&mut client_in, &mut server_out, &state),
                pipe(&mut server_in, &mut client_out, &state),
            )
        } => false,
        _ = cuts.changed() => true,
        _ = silences.changed() => {
            // Nothing is read or written any more; the sockets stay open until a cut.
            let _ = cuts.changed().await;
            true
        }
    };
    if was_cut {
        reset(client_out.as_ref());
        reset(server_out.as_ref());
        state.reset.fetch_add(1, Ordering::Relaxed);
    }
    state.open.fetch_sub(1, Ordering::AcqRel);
}

/// Copies one direction, delivering each chunk `latency` after it was read.
async fn pipe(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, state: &State) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = Duration::from_micros(state.latency_us.load(Ordering::Acquire));
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
