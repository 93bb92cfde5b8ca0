//! The systemd watchdog (`WatchdogSec=`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::notify::notify;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchdog_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        // Outside systemd the ping is a no-op; the loop must still end at the cancellation.
        tokio::time::timeout(Duration::from_secs(5), watchdog(Duration::from_millis(10), shutdown, || true))
            .await
            .expect("watchdog ends once shutdown is cancelled");
    }
}
