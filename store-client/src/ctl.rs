//! Output and transfer helpers behind `storectl`: tables, JSON, progress bars.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::protocol::{ObjectInfo, ObjectState};

/// Objects at least this large get a progress bar when stderr is a terminal.
pub const PROGRESS_THRESHOLD: u64 = 64 * 1024 * 1024;

/// A byte progress bar, hidden unless stderr is a terminal and the transfer is large.
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if total < PROGRESS_THRESHOLD || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}

/// A spinner for work whose progress cannot be observed (an in-kernel copy).
pub fn spinner(total: u64, message: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if total < PROGRESS_THRESHOLD || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Writes `data` to `out` in pieces, advancing `bar`.
pub fn write_with_progress(data: &[u8], out: &mut dyn Write, bar: &ProgressBar) -> io::Result<()> {
    for piece in data.chunks(8 << 20) {
        out.write_all(piece)?;
        bar.inc(piece.len() as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

fn state(s: ObjectState) -> &'static str {
    match s {
        ObjectState::Pending => "pending",
        ObjectState::Sealed => "sealed",
        ObjectState::Deleted => "deleted",
    }
}

fn human_age(ms: u64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Objects as an aligned table.
pub fn object_table(objects: &[ObjectInfo]) -> String {
    let mut out = format!(
        "{:<40} {:>12} {:<8} {:>6} {:>6} {:<4} {}\n",
        "NAME", "SIZE", "STATE", "LEASES", "AGE", "EVIC", "DIGEST"
    );
    for o in objects {
        let digest = o.digest.map(|d| d.to_hex()[..16].to_owned()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<40} {:>12} {:<8} {:>6} {:>6} {:<4} {}\n",
            o.name,
            bytesize::ByteSize(o.size).to_string(),
            state(o.state),
            o.leases,
            human_age(o.age_ms),
            if o.evictable { "yes" } else { "no" },
            digest
        ));
    }
    out
}

/// One object's details, a field per line.
pub fn object_details(o: &ObjectInfo) -> String {
    format!(
        "name:       {}\nid:         {}\nsize:       {} ({} bytes)\nstate:      {}\ndigest:     {}\nchunk size: {}\nleases:     {}\nage:        {}\nevictable:  {}\n",
        o.name,
        o.id,
        bytesize::ByteSize(o.size),
        o.size,
        state(o.state),
        o.digest.map(|d| d.to_hex()).unwrap_or_else(|| "-".into()),
        bytesize::ByteSize(o.chunk_size),
        o.leases,
        human_age(o.age_ms),
        o.evictable
    )
}

/// An object as JSON, with the digest as hex.
pub fn object_json(o: &ObjectInfo) -> serde_json::Value {
    serde_json::json!({
        "id": o.id,
        "name": o.name,
        "size": o.size,
        "state": state(o.state),
        "digest": o.digest.map(|d| d.to_hex()),
        "chunk_size": o.chunk_size,
        "leases": o.leases,
        "age_ms": o.age_ms,
        "evictable": o.evictable,
    })
}
