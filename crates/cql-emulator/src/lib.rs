//! A single-node CQL v4 server around the `kassandra` in-memory emulator.
//!
//! No Cassandra or ScyllaDB can run on the development and CI machines, so orderstream's demo,
//! tests, benchmarks and dev servers talk to this emulator instead, over the real CQL protocol with the real
//! `scylla` driver. Production uses Cassandra or ScyllaDB; nothing in the pipeline knows which.
//!
//! Two behaviours differ from the stock `kassandra-tester` loop, both needed to survive restarts:
//! - prepared-statement ids are a hash of the query text, so a driver that prepared a statement
//!   before the server restarted can still execute it afterwards;
//! - the state is loaded from `--state` at start and saved there on SIGTERM/SIGINT (a `kill -9`
//!   loses everything since the last save, which a real node would not).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use kassandra::error::DbError;
use kassandra::frame::request::{Request, RequestOpcode};
use kassandra::frame::request_stream;
use kassandra::frame::response::ResponseFrameCodec;
use kassandra::frame::response::{error::Error as CqlError, Response};
use kassandra::session::KassandraSession;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Encoder;

/// Errors that stop the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {reason}")]
    LoadState { path: PathBuf, reason: String },
    #[error("cannot save state file {path}: {source}")]
    SaveState {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Shared = Arc<Mutex<KassandraSession>>;

/// Runs the emulator until `shutdown` resolves (the binary passes SIGTERM or SIGINT), then saves
/// the state (when a path is given) and exits the process.
pub async fn serve(
    listen: SocketAddr,
    state: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EmulatorError> {
    let session = match &state {
        Some(path) if path.exists() => load(path)?,
        _ => KassandraSession::new(),
    };
    let shared: Shared = Arc::new(Mutex::new(session));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    // The harness waits for this exact line to learn that the port is open.
    println!("cql emulator listening on {bound}");

    tokio::select! {
        _ = accept(listener, shared.clone()) => {}
        _ = shutdown => {}
    }
    if let Some(path) = state {
        // Keep the session locked until the process is gone: a write handled after the snapshot
        // would be acknowledged and then lost. Requests that wait on the lock are never
        // answered, so their clients retry them against the next server.
        let session = match shared.lock() {
            Ok(session) => session,
            Err(poisoned) => poisoned.into_inner(),
        };
        save(&session, &path)?;
        println!("cql emulator state saved to {}", path.display());
        std::process::exit(0);
    }
    Ok(())
}

/// Serves an empty, in-memory emulator from this process on a free loopback port (the demo).
/// It lives until the runtime ends; returns the address to give the driver.
pub async fn start_in_process() -> Result<SocketAddr, EmulatorError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| EmulatorError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind { addr, source })?;
    tokio::spawn(accept(
        listener,
        Arc::new(Mutex::new(KassandraSession::new())),
    ));
    Ok(bound)
}

async fn accept(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(client(shared.clone(), stream));
            }
            Err(err) => tracing::warn!(%err, "accept failed"),
        }
    }
}

fn load(path: &Path) -> Result<KassandraSession, EmulatorError> {
    let bytes = std::fs::read(path).map_err(|e| EmulatorError::LoadState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    KassandraSession::load_state(&bytes).map_err(|e| EmulatorError::LoadState {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn save(session: &KassandraSession, path: &Path) -> Result<(), EmulatorError> {
    let bytes = session.save_state();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| EmulatorError::SaveState {
            path: path.to_owned(),
            source,
        })
}

/// FNV-1a, 128 bits: a stable id for a query text (std's hashers are not stable across builds).
fn query_id(text: &str) -> u128 {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in text.as_bytes() {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    hash
}

/// Most answers held back before they are written: a driver that keeps sending must not wait
/// for a long run of requests to be answered before it sees the first answer.
const WRITE_GROUP: usize = 32;

async fn client(shared: Shared, mut stream: TcpStream) {
    // The node presents itself at the address the client reached it on.
    let Ok(node) = stream.local_addr() else {
        return;
    };
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    // Answers are encoded one by one (kassandra's encoder overwrites whatever its buffer holds,
    // so it cannot append to a FramedWrite's buffer) and written in groups: every request that
    // has already arrived is answered, then the group goes out in one write. A write per answer
    // cost a write(2) per insert here and a wake-up per insert in the driver.
    let (mut frame, mut group, mut answers) = (BytesMut::new(), BytesMut::new(), 0);
    loop {
        let next = match requests.next().now_or_never() {
            Some(next) if answers < WRITE_GROUP => next,
            ready => {
                if !group.is_empty() && write.write_all(&group).await.is_err() {
                    break;
                }
                group.clear();
                answers = 0;
                match ready {
                    Some(next) => next,
                    None => requests.next().await,
                }
            }
        };
        let Some(Ok((params, opcode, data))) = next else {
            break;
        };
        let system = crate::system::answer(opcode, &data, node, &shared);
        let response = match system {
            Some(response) => response,
            None => match Request::deserialize(opcode, &data, params.flags) {
                Ok(Request::Prepare(query)) if opcode == RequestOpcode::Prepare => {
                    let text = kassandra::frame::parse::long_string(&data)
                        .map(|(_, text)| text.to_owned())
                        .unwrap_or_default();
                    with_session(&shared, |s| s.prepare_with_id(query, query_id(&text)))
                }
                Ok(request) => handle(&shared, request),
                Err(_) => Response::Error(CqlError::new(
                    DbError::ProtocolError,
                    "error parsing request",
                )),
            },
        };
        frame.clear();
        if ResponseFrameCodec
            .encode((response, params.stream), &mut frame)
            .is_err()
        {
            break;
        }
        group.extend_from_slice(&frame);
        answers += 1;
    }
}

fn with_session(
    shared: &Shared,
    f: impl FnOnce(
        &mut KassandraSession,
    ) -> Result<kassandra::frame::response::result::QueryResult, CqlError>,
) -> Response {
    let mut guard = match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    match f(&mut guard) {
        Ok(result) => Response::Result(result),
        Err(err) => Response::Error(err),
    }
}

fn handle(shared: &Shared, request: Request<'_>) -> Response {
    match request {
        Request::StartUp(_) | Request::Register { .. } => Response::Ready,
        Request::Options => Response::options(),
        Request::Query(query) => with_session(shared, |s| s.process(query)),
        Request::Prepare(query) => with_session(shared, |s| s.prepare(query)),
        Request::Execute(execute) => with_session(shared, |s| s.execute(execute)),
        Request::Batch(batch) => with_session(shared, |s| s.process_batch(batch)),
        Request::AuthResponse => Response::Error(CqlError::new(
            DbError::ProtocolError,
            "authentication is not supported",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::query_id;

    /// The driver's whole start-up and a round of concurrent requests are answered (the answers
    /// are written in groups, which must never leave one unsent).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_driver_gets_every_answer() {
        let addr = super::start_in_process().await.expect("emulator");
        let session = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            scylla::client::session_builder::SessionBuilder::new()
                .known_node(addr.to_string())
                .build(),
        )
        .await
        .expect("connected within 10 s")
        .expect("connected");
        let queries = (0..200).map(|_| session.query_unpaged("SELECT * FROM system.local", ()));
        let answers = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures::future::join_all(queries),
        )
        .await
        .expect("every answer within 10 s");
        assert_eq!(answers.len(), 200);
        for answer in answers {
            answer.expect("each query answered without error");
        }
    }

    #[test]
    fn query_ids_are_stable_and_distinct() {
        assert_eq!(query_id("SELECT 1"), query_id("SELECT 1"));
        assert_ne!(query_id("SELECT 1"), query_id("SELECT 2"));
    }
}
