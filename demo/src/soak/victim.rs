//! Victims: client processes killed mid-operation.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store_client::client::PutOptions;
use store_client::{ClientError, ErrorCode, ObjectGuard, StoreClient};

use super::config::{
    BUSY_RETRY_AFTER, KIB, MARKS, MIB, SoakConfig, VICTIM_BUSY, VICTIM_MAX_SIZE_ENV, VICTIM_NAMES, VICTIM_NAMES_ENV,
    VICTIM_SEED_ENV, VICTIM_SOCKET_ENV,
};
use super::report::VictimStats;
use super::tools::{Ctx, content, digest, fill, hex, pick_size, victim_name, worker_name};
use store_tests::rng::Rng;

/// If this process was started as a soak victim (its environment names a socket), runs the
/// victim until it is killed and never returns; otherwise returns at once. The bench calls
/// it first thing in `main`, the test binary from an `#[ignore]`d helper test.
pub fn victim_from_env() {
    let Some(socket) = std::env::var_os(VICTIM_SOCKET_ENV) else { return };
    let number = |key: &str, default: u64| std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let seed = number(VICTIM_SEED_ENV, 1);
    let names = number(VICTIM_NAMES_ENV, 1024);
    let max_size = number(VICTIM_MAX_SIZE_ENV, 8 * MIB);
    victim(Path::new(&socket), seed, names, max_size)
}

pub(super) fn victim_exit(code: i32, message: String) -> ! {
    eprintln!("SOAK-VICTIM {message}");
    std::process::exit(code)
}

/// Tells the parent (on stderr, read after the kill) of a `WritableMapping` refusal and
/// whether the same request 100 ms later cleared it.
pub(super) fn victim_busy(message: &str, cleared: bool) {
    eprintln!("{VICTIM_BUSY} cleared={cleared} {message}");
}

/// An expected error of a race, or the victim's end (exit status 4).
pub(super) fn victim_check(op: &str, name: &str, e: ClientError, expected: &[ErrorCode]) {
    if !e.code().is_some_and(|c| expected.contains(&c)) {
        victim_exit(4, format!("ERROR {op} {name}: {e}"));
    }
}

/// Checks a victim's mapping against the daemon's root digest (a victim does not know the
/// writers' digests); a mismatch ends the victim with status 3.
pub(super) fn victim_verify(name: &str, guard: &ObjectGuard) {
    let actual = digest(guard);
    if guard.info().digest.map(|d| d.0) != Some(actual) || guard.len() as u64 != guard.info().size {
        victim_exit(
            3,
            format!(
                "MISMATCH {name} id {}: mapping hashes to {}, info {:?}",
                guard.info().id,
                hex(&actual),
                guard.info()
            ),
        );
    }
}

/// The victim's loop. Before each step it prints one marker byte (unbuffered), so the
/// parent learns which step a kill interrupted: `K` connect, `C` create, `F` fill, `S` seal,
/// `A` abort, `P` put, `G` get, `H` hold, `W` wait-get, `D` delete, `.` between steps.
pub(super) fn victim(socket: &Path, seed: u64, names: u64, max_size: u64) -> ! {
    let mut out = std::io::stdout().lock();
    let mut mark = |m: u8| {
        let _ = out.write_all(&[m]);
        let _ = out.flush();
    };
    mark(b'\n');
    for &b in MARKS.as_bytes() {
        mark(b);
    }
    let mut rng = Rng::new(seed);
    let connect = |mark: &mut dyn FnMut(u8)| {
        mark(b'K');
        StoreClient::connect(socket).unwrap_or_else(|e| victim_exit(2, format!("ERROR connect: {e}")))
    };
    let mut clients = vec![connect(&mut mark)];
    if rng.percent(50) {
        clients.push(connect(&mut mark));
    }
    let mut held: Vec<(ObjectGuard, Instant)> = Vec::new();
    let any_name = |rng: &mut Rng| {
        if rng.percent(50) { worker_name(rng.below(names)) } else { victim_name(rng.below(VICTIM_NAMES)) }
    };
    loop {
        let now = Instant::now();
        held.retain(|(_, until)| *until > now);
        let client = clients[rng.below(clients.len() as u64) as usize].clone();
        match rng.below(100) {
            0..25 => {
                let name = victim_name(rng.below(VICTIM_NAMES));
                let size = pick_size(&mut rng, max_size);
                mark(b'C');
                let opts = PutOptions { evictable: rng.percent(50) };
                let mut created = client.create(&name, size, opts);
                if created.as_ref().is_err_and(|e| e.code() == Some(ErrorCode::AlreadyExists)) {
                    // Replace it: delete, then create again.
                    mark(b'D');
                    if let Err(e) = client.delete(&name) {
                        victim_check("delete", &name, e, &[ErrorCode::NotFound, ErrorCode::Pending]);
                    }
                    mark(b'C');
                    created = client.create(&name, size, opts);
                }
                match created {
                    Ok(mut obj) => {
                        mark(b'F');
                        let seed = rng.next_u64();
                        match obj.as_mut_slice() {
                            Ok(s) => {
                                // In pieces, with pauses: a kill lands with the object half
                                // filled and the writable mapping open.
                                for piece in s.chunks_mut(256 * KIB as usize) {
                                    fill(piece, seed);
                                    if rng.percent(20) {
                                        std::thread::sleep(rng.millis(1, 5));
                                    }
                                }
                            }
                            Err(e) => victim_exit(4, format!("ERROR mapping {name}: {e}")),
                        }
                        if rng.percent(90) {
                            mark(b'S');
                            let mut sealed = obj.seal();
                            if let Err(e) = &sealed
                                && e.code() == Some(ErrorCode::WritableMapping)
                            {
                                let first = e.to_string();
                                std::thread::sleep(BUSY_RETRY_AFTER);
                                sealed = obj.seal();
                                victim_busy(&format!("seal {name} ({size} bytes): {first}"), sealed.is_ok());
                            }
                            if let Err(e) = sealed {
                                victim_check("seal", &name, e, &[]);
                            }
                        } else {
                            mark(b'A');
                            if let Err(e) = obj.abort() {
                                victim_check("abort", &name, e, &[]);
                            }
                        }
                    }
                    Err(e) => victim_check(
                        "create",
                        &name,
                        e,
                        &[ErrorCode::AlreadyExists, ErrorCode::Pending, ErrorCode::StoreFull],
                    ),
                }
            }
            25..45 => {
                let name = victim_name(rng.below(VICTIM_NAMES));
                let data = content(pick_size(&mut rng, max_size), rng.next_u64());
                mark(b'P');
                let opts = PutOptions { evictable: rng.percent(50) };
                let mut put = client.put_with(&name, &data, opts);
                if put.as_ref().is_err_and(|e| e.code() == Some(ErrorCode::AlreadyExists)) {
                    mark(b'D');
                    if let Err(e) = client.delete(&name) {
                        victim_check("delete", &name, e, &[ErrorCode::NotFound, ErrorCode::Pending]);
                    }
                    mark(b'P');
                    put = client.put_with(&name, &data, opts);
                }
                if let Err(e) = &put
                    && e.code() == Some(ErrorCode::WritableMapping)
                {
                    let first = e.to_string();
                    std::thread::sleep(BUSY_RETRY_AFTER);
                    put = client.put_with(&name, &data, opts);
                    victim_busy(&format!("put {name} ({} bytes): {first}", data.len()), put.is_ok());
                }
                if let Err(e) = put {
                    victim_check(
                        "put",
                        &name,
                        e,
                        &[ErrorCode::AlreadyExists, ErrorCode::Pending, ErrorCode::StoreFull],
                    );
                }
            }
            45..70 => {
                let name = any_name(&mut rng);
                let timeout = if rng.percent(70) { Duration::ZERO } else { rng.millis(1, 300) };
                mark(b'G');
                match client.get(&name, timeout) {
                    Ok(guard) => {
                        victim_verify(&name, &guard);
                        if held.len() < 4 && rng.percent(60) {
                            let until = Instant::now() + rng.millis(10, 1500);
                            held.push((guard, until));
                        }
                    }
                    Err(e) => victim_check("get", &name, e, &[ErrorCode::NotFound, ErrorCode::Timeout]),
                }
            }
            70..78 => {
                mark(b'H');
                std::thread::sleep(rng.millis(0, 300));
            }
            78..84 => {
                // A get of a name nobody writes: the victim dies waiting in it.
                let name = format!("soak/never/{}", rng.below(16));
                mark(b'W');
                match client.get(&name, rng.millis(20, 500)) {
                    Ok(_) => victim_exit(4, format!("ERROR get {name}: an object nobody wrote")),
                    Err(e) => victim_check("wait-get", &name, e, &[ErrorCode::Timeout]),
                }
            }
            84..95 => {
                let name = any_name(&mut rng);
                mark(b'D');
                if let Err(e) = client.delete(&name) {
                    victim_check("delete", &name, e, &[ErrorCode::NotFound, ErrorCode::Pending]);
                }
            }
            _ => {
                // Another connection (held guards keep the old one open).
                let i = rng.below(clients.len() as u64) as usize;
                clients[i] = connect(&mut mark);
            }
        }
        mark(b'.');
    }
}

pub(super) fn step_label(marker: Option<u8>) -> &'static str {
    match marker {
        None => "not-started",
        Some(b'K') => "connect",
        Some(b'C') => "create",
        Some(b'F') => "fill",
        Some(b'S') => "seal",
        Some(b'A') => "abort",
        Some(b'P') => "put",
        Some(b'G') => "get",
        Some(b'H') => "hold",
        Some(b'W') => "wait-get",
        Some(b'D') => "delete",
        Some(b'.') => "idle",
        Some(_) => "other",
    }
}

pub(super) struct Victim {
    pub(super) child: Child,
    pub(super) deadline: Instant,
}

/// Keeps `victims_at_once` victims alive, each killed at a random moment of its life.
pub(super) fn run_victims(ctx: &Ctx, config: &SoakConfig) -> VictimStats {
    let mut stats = VictimStats::default();
    let mut rng = Rng::new(config.seed ^ 0x5EED_0F71_C711_1500);
    let mut live: Vec<Victim> = Vec::new();
    let (min_life, max_life) = config.victim_life;
    let (min_ms, max_ms) = (min_life.as_millis() as u64, max_life.as_millis() as u64);
    while !ctx.stop.load(Ordering::Relaxed) {
        while live.len() < config.victims_at_once {
            let spawned = Command::new(&config.victim.program)
                .args(&config.victim.args)
                .env(VICTIM_SOCKET_ENV, &ctx.socket)
                .env(VICTIM_SEED_ENV, rng.next_u64().to_string())
                .env(VICTIM_NAMES_ENV, ctx.names.to_string())
                .env(VICTIM_MAX_SIZE_ENV, ctx.max_size.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                Ok(child) => {
                    stats.spawned += 1;
                    live.push(Victim { child, deadline: Instant::now() + rng.millis(min_ms, max_ms) });
                }
                Err(e) => {
                    ctx.failures.add(format!("spawning a victim: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(3));
        let now = Instant::now();
        let mut i = 0;
        while i < live.len() {
            if live[i].deadline <= now {
                finish_victim(ctx, live.swap_remove(i), &mut stats);
            } else {
                i += 1;
            }
        }
    }
    for v in live {
        finish_victim(ctx, v, &mut stats);
    }
    stats
}

/// Kills a victim (unless it already exited, which is a failure) and reads its markers.
pub(super) fn finish_victim(ctx: &Ctx, mut v: Victim, stats: &mut VictimStats) {
    let pid = v.child.id();
    let exited = match v.child.try_wait() {
        Ok(Some(status)) => Some(status),
        Ok(None) => {
            if let Err(e) = v.child.kill() {
                ctx.failures.add(format!("SIGKILL of victim {}: {e}", v.child.id()));
            }
            None
        }
        Err(e) => {
            ctx.failures.add(format!("waiting for victim {}: {e}", v.child.id()));
            None
        }
    };
    let output = match v.child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return ctx.failures.add(format!("collecting a victim: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let marks = stdout.rfind(MARKS).map(|at| &stdout.as_bytes()[at + MARKS.len()..]).unwrap_or(&[]);
    for &m in marks {
        if m != b'.' {
            *stats.steps.entry(step_label(Some(m)).to_owned()).or_default() += 1;
        }
    }
    for line in stderr.lines().filter(|l| l.starts_with(VICTIM_BUSY)) {
        let message = format!("victim {pid}: {line}");
        if line.contains("cleared=true") && ctx.tolerate_transient_busy {
            ctx.known.add(message);
        } else {
            ctx.failures.add(message);
        }
    }
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with(VICTIM_BUSY) && (l.contains("SOAK-VICTIM") || l.contains("panicked")))
        .collect();
    if let Some(status) = exited {
        stats.exited_by_themselves += 1;
        ctx.failures.add(format!("a victim exited by itself ({status}): {}", stderr.trim()));
        return;
    }
    stats.killed += 1;
    *stats.killed_during.entry(step_label(marks.last().copied()).to_owned()).or_default() += 1;
    if !complaints.is_empty() {
        ctx.failures.add(format!("a victim complained before it was killed: {}", complaints.join(" | ")));
    }
}
