//! Running under a service manager: the glue `store-daemon` and `store-scheduler` share.
//!
//! This crate owns `sd_notify` readiness and stopping for `Type=notify` units ([`notify`]),
//! the systemd watchdog ([`watchdog`]), turning SIGTERM/SIGINT into a cancellation
//! ([`signals`]) and logs that read well in the journal ([`logging`]). Outside systemd
//! (`NOTIFY_SOCKET` unset) every notification is a no-op.

pub mod logging;
pub mod notify;
pub mod signals;
pub mod watchdog;

pub use logging::init_logging;
pub use notify::{notify_ready, notify_stopping};
pub use signals::cancel_on_signals;
pub use watchdog::{watchdog, watchdog_interval};
