//! Running under a service manager: `sd_notify` readiness and stopping (`Type=notify`), the
//! watchdog, and logs that read well in the journal.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Tells the service manager that the daemon serves: call only once every listener is bound.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the daemon is draining and will exit.
pub fn notify_stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn notify(states: &[NotifyState<'_>]) {
    // Keep NOTIFY_SOCKET in the environment: STOPPING=1 and the watchdog need it later.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` at half the interval for as long as `healthy` says so and the
/// runtime keeps scheduling this task; stops at `shutdown` (systemd stops expecting pings
/// after STOPPING=1).
pub async fn watchdog(interval: Duration, shutdown: CancellationToken, healthy: impl Fn() -> bool) {
    info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if healthy() {
            notify(&[NotifyState::Watchdog]);
        } else {
            debug!("health check failed; withholding the watchdog ping");
        }
    }
}

/// Logs to stderr without colours; under systemd (`JOURNAL_STREAM` set) without timestamps
/// too, since the journal stamps every line itself.
pub fn init_logging(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
    Ok(())
}
