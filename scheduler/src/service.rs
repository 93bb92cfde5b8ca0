//! Running under a service manager: `sd_notify` readiness and stopping (`Type=notify`) and
//! logs that read well in the journal. Outside systemd every notification is a no-op.

use sd_notify::NotifyState;

/// Tells the service manager that the scheduler serves: call once its endpoints are bound.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the scheduler is stopping.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(states: &[NotifyState<'_>]) {
    // NOTIFY_SOCKET stays set: STOPPING=1 needs it later.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
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
