//! SIGTERM and SIGINT as a cancellation.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `shutdown` on SIGTERM or SIGINT. `who` names the service in the warning logged
/// when the handlers cannot be installed ("stop the {who} with SIGKILL").
pub async fn cancel_on_signals(shutdown: CancellationToken, who: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!("cannot install signal handlers; stop the {who} with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
