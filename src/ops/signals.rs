//! SIGTERM and SIGINT.

/// SIGTERM and SIGINT, caught from the moment [`Shutdown::listen`] is called.
///
/// Listen first thing: a signal that arrives before any handler exists kills the process with
/// the default action (exit by signal, not 0), e.g. a SIGTERM sent to an instance that is still
/// connecting to its stores. One listener for the whole run also means a signal that arrives
/// between two waits is not lost.
pub struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Installs the handlers now. Must run inside the tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves when a signal has arrived (at once if one arrived since `listen`).
    pub(crate) async fn requested(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGTERM or SIGINT (listening from the first poll; see [`Shutdown`]).
pub async fn shutdown_signal() {
    Shutdown::listen().requested().await
}
