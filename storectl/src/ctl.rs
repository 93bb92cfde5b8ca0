//! Output and transfer helpers behind `storectl`: tables, JSON, progress bars.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use store_client::wire::object::{ObjectInfo, ObjectState};

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

/// Holders of an object.
pub fn locations_table(locations: &[store_client::wire::node::Location]) -> String {
    let mut out = format!("{:<20} {:<22} {:>12} {:>10}  {}\n", "NODE", "ADDRESS", "SIZE", "CHUNKS", "STATE");
    for l in locations {
        out.push_str(&format!(
            "{:<20} {:<22} {:>12} {:>10}  {}\n",
            l.node,
            l.addr,
            bytesize::ByteSize(l.size).to_string(),
            format!("{}/{}", l.chunks.count(), l.chunks.len()),
            if l.is_complete() { "complete" } else { "partial" }
        ));
    }
    out
}

pub fn locations_json(locations: &[store_client::wire::node::Location]) -> serde_json::Value {
    serde_json::Value::Array(
        locations
            .iter()
            .map(|l| {
                serde_json::json!({
                    "node": l.node, "addr": l.addr.to_string(), "size": l.size, "digest": l.root.to_hex(),
                    "chunks_held": l.chunks.count(), "chunks": l.chunks.len(), "complete": l.is_complete(),
                })
            })
            .collect(),
    )
}

pub fn nodes_table(nodes: &[store_client::wire::node::NodeStatus]) -> String {
    let mut out = format!(
        "{:<20} {:<22} {:>12} {:>12} {:>8} {:>10}  {}\n",
        "NODE", "ADDRESS", "CAPACITY", "FREE", "OBJECTS", "SEEN", "LABELS"
    );
    for n in nodes {
        let labels: Vec<String> = n.info.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "{:<20} {:<22} {:>12} {:>12} {:>8} {:>8}ms  {}\n",
            n.info.id,
            n.info.addr,
            bytesize::ByteSize(n.info.capacity).to_string(),
            bytesize::ByteSize(n.info.free).to_string(),
            n.objects,
            n.last_seen_ms,
            labels.join(",")
        ));
    }
    out
}

pub fn nodes_json(nodes: &[store_client::wire::node::NodeStatus]) -> serde_json::Value {
    serde_json::Value::Array(
        nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.info.id, "addr": n.info.addr.to_string(), "capacity": n.info.capacity,
                    "free": n.info.free, "labels": n.info.labels, "objects": n.objects, "last_seen_ms": n.last_seen_ms,
                })
            })
            .collect(),
    )
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { bytes as f64 / seconds / 1e6 } else { 0.0 }
}

pub fn replicas_table(outcomes: &[store_client::wire::local::ReplicaOutcome]) -> String {
    let mut out = format!("{:<20} {:>10} {:>10} {:>12}  {}\n", "NODE", "SECONDS", "MB/S", "BYTES", "FROM / ERROR");
    for o in outcomes {
        match &o.result {
            Ok(r) => {
                let from: Vec<String> = r.from.iter().map(|(n, b)| format!("{n}:{}", bytesize::ByteSize(*b))).collect();
                let note = if r.already_present { "already present".to_owned() } else { from.join(" ") };
                out.push_str(&format!(
                    "{:<20} {:>10.3} {:>10.1} {:>12}  {}\n",
                    o.node,
                    r.seconds,
                    mb_per_s(r.bytes, r.seconds),
                    r.bytes,
                    note
                ));
            }
            Err(e) => out.push_str(&format!("{:<20} {:>10} {:>10} {:>12}  error: {}\n", o.node, "-", "-", "-", e)),
        }
    }
    out
}

pub fn replicas_json(outcomes: &[store_client::wire::local::ReplicaOutcome]) -> serde_json::Value {
    serde_json::Value::Array(
        outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(r) => serde_json::json!({
                    "node": o.node, "ok": true, "seconds": r.seconds, "bytes": r.bytes,
                    "mb_per_s": mb_per_s(r.bytes, r.seconds), "from": r.from, "already_present": r.already_present,
                    "corrupt_chunks": r.corrupt_chunks, "retries": r.retries, "s3_bytes": r.s3_bytes,
                }),
                Err(e) => serde_json::json!({ "node": o.node, "ok": false, "error": e }),
            })
            .collect(),
    )
}

/// A cooperative fetch: one row per node with its share, what S3 served it, and the pull.
pub fn cooperative_table(p: &store_client::wire::local::CooperativePull) -> String {
    let mut out = format!(
        "{} {} from {}: {:.3} s ({:.3} s reading shares), S3 served {} ({:.2} x the object), blake3 {}\n",
        p.name,
        bytesize::ByteSize(p.origin.size),
        p.origin.url,
        p.total_seconds,
        p.share_seconds,
        bytesize::ByteSize(p.s3_bytes),
        p.s3_bytes as f64 / p.origin.size.max(1) as f64,
        p.digest.to_hex()
    );
    out.push_str(&format!(
        "{:<20} {:>13} {:>10} {:>10} {:>12}  {}\n",
        "NODE", "SHARE", "SECONDS", "MB/S", "S3 BYTES", "FROM / ERROR"
    ));
    for o in &p.nodes {
        let share = format!("{}..{}", o.share.0, o.share.1);
        match &o.result {
            Ok(r) => {
                let from: Vec<String> = r.from.iter().map(|(n, b)| format!("{n}:{}", bytesize::ByteSize(*b))).collect();
                out.push_str(&format!(
                    "{:<20} {:>13} {:>10.3} {:>10.1} {:>12}  {}\n",
                    o.node,
                    share,
                    r.seconds,
                    mb_per_s(r.bytes, r.seconds),
                    r.s3_bytes,
                    from.join(" ")
                ));
            }
            Err(e) => {
                out.push_str(&format!("{:<20} {:>13} {:>10} {:>10} {:>12}  error: {e}\n", o.node, share, "-", "-", "-"))
            }
        }
    }
    out
}

pub fn cooperative_json(p: &store_client::wire::local::CooperativePull) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = p
        .nodes
        .iter()
        .map(|o| match &o.result {
            Ok(r) => serde_json::json!({
                "node": o.node, "ok": true, "share": [o.share.0, o.share.1], "seconds": r.seconds, "bytes": r.bytes,
                "s3_bytes": r.s3_bytes, "from": r.from, "corrupt_chunks": r.corrupt_chunks, "retries": r.retries,
            }),
            Err(e) => serde_json::json!({ "node": o.node, "ok": false, "share": [o.share.0, o.share.1], "error": e }),
        })
        .collect();
    serde_json::json!({
        "name": p.name, "url": p.origin.url, "etag": p.origin.etag, "size": p.origin.size,
        "blake3": p.digest.to_hex(), "share_seconds": p.share_seconds, "seconds": p.total_seconds,
        "s3_bytes": p.s3_bytes, "s3_factor": p.s3_bytes as f64 / p.origin.size.max(1) as f64, "nodes": nodes,
    })
}

fn rate_text(bytes_per_second: f64, assumed: bool) -> String {
    let text = format!("{:.1}Mbit/s", bytes_per_second * 8.0 / 1e6);
    if assumed { format!("{text}*") } else { text }
}

/// A placement: the node chosen for each task, then the ranking of every qualifying node,
/// then what the prefetch requests got. `*` marks a bandwidth that is the scheduler's
/// default, not an observation.
pub fn placement_table(outcome: &store_client::wire::placement::PlaceOutcome) -> String {
    let header = |first: &str| {
        format!(
            "{:<6} {:<20} {:>12} {:>10} {:>10} {:>10} {:>14}\n",
            first, "NODE", "MISSING", "TRANSFER", "QUEUED", "START", "INBOUND"
        )
    };
    let row = |first: String, e: &store_client::wire::placement::NodeEstimate| {
        format!(
            "{:<6} {:<20} {:>12} {:>9.2}s {:>9.2}s {:>9.2}s {:>14}\n",
            first,
            e.node,
            bytesize::ByteSize(e.missing_bytes).to_string(),
            e.transfer_seconds,
            e.queued_seconds,
            e.estimated_start_seconds,
            rate_text(e.inbound_bytes_per_second, e.bandwidth_assumed)
        )
    };
    let placement = &outcome.placement;
    if placement.tasks.is_empty() {
        return "no node qualifies\n".to_owned();
    }
    let mut out = header("TASK");
    for (i, e) in placement.tasks.iter().enumerate() {
        out.push_str(&row(i.to_string(), e));
    }
    out.push('\n');
    out.push_str(&header("RANK"));
    for (i, e) in placement.ranked.iter().enumerate() {
        out.push_str(&row((i + 1).to_string(), e));
    }
    if !outcome.prefetch.is_empty() {
        out.push('\n');
        for p in &outcome.prefetch {
            match &p.result {
                Ok(()) => out.push_str(&format!("prefetch on {}: {} queued\n", p.node, p.names.join(","))),
                Err(e) => out.push_str(&format!("prefetch on {}: error: {e}\n", p.node)),
            }
        }
    }
    out
}

pub fn placement_json(outcome: &store_client::wire::placement::PlaceOutcome) -> serde_json::Value {
    let estimate = |e: &store_client::wire::placement::NodeEstimate| {
        serde_json::json!({
            "node": e.node, "addr": e.addr.to_string(), "missing_bytes": e.missing_bytes, "missing": e.missing,
            "transfer_seconds": e.transfer_seconds, "queued_seconds": e.queued_seconds,
            "estimated_seconds": e.estimated_start_seconds,
            "inbound_bytes_per_second": e.inbound_bytes_per_second, "bandwidth_assumed": e.bandwidth_assumed,
        })
    };
    serde_json::json!({
        "tasks": outcome.placement.tasks.iter().map(estimate).collect::<Vec<_>>(),
        "ranked": outcome.placement.ranked.iter().map(estimate).collect::<Vec<_>>(),
        "prefetch": outcome.prefetch.iter().map(|p| match &p.result {
            Ok(()) => serde_json::json!({ "node": p.node, "names": p.names, "ok": true }),
            Err(e) => serde_json::json!({ "node": p.node, "names": p.names, "ok": false, "error": e }),
        }).collect::<Vec<_>>(),
    })
}
