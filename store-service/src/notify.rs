//! `sd_notify` readiness and stopping (`Type=notify`).

use sd_notify::NotifyState;
use tracing::warn;

/// Tells the service manager that the service serves: call only once every listener is
/// bound.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the service is stopping (draining) and will exit.
pub fn notify_stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub(crate) fn notify(states: &[NotifyState<'_>]) {
    // Keep NOTIFY_SOCKET in the environment: STOPPING=1 and the watchdog need it later.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}
