//! Workers: clients mixing put/create/seal/get/delete, every get checked against its writer's
//! digest.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store_client::client::PutOptions;
use store_client::wire::object::ObjectId;
use store_client::{ClientError, ErrorCode, ObjectGuard, ObjectState, StoreClient};

use super::config::{BUSY_RETRY_AFTER, MAX_HELD, REGISTRATION_WAIT};
use super::tools::{Ctx, content, digest, fill, hex, outcome_text, pick_size, shared_writable_mappers, worker_name};
use store_tests::rng::Rng;

/// One worker's counts, merged into the report at the end.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) ops: BTreeMap<&'static str, u64>,
    pub(super) outcomes: BTreeMap<String, u64>,
    pub(super) digest_checks: u64,
    pub(super) root_checks: u64,
    pub(super) held_rechecks: u64,
    pub(super) bytes_written: u64,
    pub(super) bytes_verified: u64,
}

impl Tally {
    pub(super) fn op(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }

    pub(super) fn outcome(&mut self, op: &str, what: &str) {
        *self.outcomes.entry(format!("{op}/{what}")).or_default() += 1;
    }

    pub(super) fn merge(&mut self, other: Tally) {
        for (k, v) in other.ops {
            *self.ops.entry(k).or_default() += v;
        }
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.digest_checks += other.digest_checks;
        self.root_checks += other.root_checks;
        self.held_rechecks += other.held_rechecks;
        self.bytes_written += other.bytes_written;
        self.bytes_verified += other.bytes_verified;
    }
}

/// A guard a worker keeps for a while, with the digest its bytes must keep.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) guard: ObjectGuard,
    pub(super) name: String,
    pub(super) digest: [u8; 32],
    pub(super) until: Instant,
}

pub(super) struct Worker<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) index: usize,
    pub(super) rng: Rng,
    pub(super) client: StoreClient,
    pub(super) held: Vec<Held>,
    pub(super) tally: Tally,
}

impl Worker<'_> {
    pub(super) fn run(mut self) -> Tally {
        while !self.ctx.stop.load(Ordering::Relaxed) {
            self.release_due(false);
            self.ctx.ops.fetch_add(1, Ordering::Relaxed);
            match self.rng.below(100) {
                0..25 => self.put(),
                25..45 => self.create(),
                45..80 => self.get(),
                80..96 => self.delete(),
                96..99 => self.stat(),
                _ => self.list(),
            }
        }
        self.release_due(true);
        self.tally
    }

    pub(super) fn fail(&self, message: String) {
        self.ctx.failures.add(format!("worker {}: {message}", self.index));
    }

    /// A `WritableMapping` refusal of an object this client no longer mapped: a failure, or
    /// the known issue if a retry cleared it and the configuration tolerates that.
    pub(super) fn busy(&self, message: String, cleared: bool) {
        let message = format!("worker {}: {message}", self.index);
        if cleared && self.ctx.tolerate_transient_busy {
            self.ctx.known.add(message);
        } else {
            self.ctx.failures.add(message);
        }
    }

    pub(super) fn name(&mut self) -> String {
        worker_name(self.rng.below(self.ctx.names))
    }

    /// Counts an error: an expected outcome of a race, or a failure. A failure that is not
    /// the daemon's answer leaves the connection in doubt, so the worker reconnects.
    pub(super) fn error(&mut self, op: &'static str, name: &str, e: ClientError, expected: &[ErrorCode]) {
        match e.code() {
            Some(code) if expected.contains(&code) => self.tally.outcome(op, &format!("{code:?}")),
            code => {
                self.tally.outcome(op, "unexpected");
                self.fail(format!("{op} {name}: {e}"));
                if code.is_none() {
                    match StoreClient::connect(&self.ctx.socket) {
                        Ok(c) => self.client = c,
                        Err(e) => {
                            self.fail(format!("reconnect: {e}"));
                            self.ctx.stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn register(&mut self, id: ObjectId, d: [u8; 32], name: &str) {
        if let Err(old) = self.ctx.expected.register(id, d) {
            self.fail(format!("object id {id} ({name}) was handed out twice: with {} and {}", hex(&old), hex(&d)));
        }
    }

    /// The daemon's root digest of an object this worker wrote must be its own digest.
    pub(super) fn check_root(&mut self, what: &str, name: &str, root: Option<store_client::Digest>, want: [u8; 32]) {
        self.tally.root_checks += 1;
        if root.map(|d| d.0) != Some(want) {
            self.fail(format!("{what} {name}: the daemon's root {root:?} differs from the writer's {}", hex(&want)));
        }
    }

    /// After `AlreadyExists`, half the time: delete the name and write again (a client
    /// replacing an object, often one that others hold leases on). Whether to write again.
    pub(super) fn replace(&mut self, name: &str) -> bool {
        if !self.rng.percent(50) {
            return false;
        }
        self.tally.op("delete-to-replace");
        match self.client.delete(name) {
            Ok(()) => self.tally.outcome("delete-to-replace", "ok"),
            Err(e) => self.error("delete-to-replace", name, e, &[ErrorCode::NotFound, ErrorCode::Pending]),
        }
        true
    }

    pub(super) fn put(&mut self) {
        let name = self.name();
        let size = pick_size(&mut self.rng, self.ctx.max_size);
        let data = content(size, self.rng.next_u64());
        self.put_named(&name, &data, true);
    }

    pub(super) fn put_named(&mut self, name: &str, data: &[u8], may_replace: bool) {
        self.tally.op("put");
        let size = data.len() as u64;
        let want = digest(data);
        let opts = PutOptions { evictable: self.rng.percent(25) };
        let mut put = self.client.put_with(name, data, opts);
        if let Err(e) = &put
            && e.code() == Some(ErrorCode::WritableMapping)
        {
            // This client never maps what it puts (it writes the memfd with write(2)), so
            // the daemon's seal found a mapping or page pin that is not the client's. Whether
            // it lasts: the same put again after 100 ms.
            let first = e.to_string();
            std::thread::sleep(BUSY_RETRY_AFTER);
            put = self.client.put_with(name, data, opts);
            let message = format!(
                "put {name} ({size} bytes): {first}; the same put {BUSY_RETRY_AFTER:?} later: {}",
                outcome_text(&put)
            );
            self.busy(message, put.is_ok());
        }
        match put {
            Ok(info) => {
                self.tally.outcome("put", "ok");
                self.tally.bytes_written += size;
                if info.size != size {
                    self.fail(format!("put {name}: {size} bytes put, the daemon says {}", info.size));
                }
                self.register(info.id, want, name);
                self.check_root("put", name, info.digest, want);
            }
            Err(e) => {
                let exists = e.code() == Some(ErrorCode::AlreadyExists);
                self.error("put", name, e, &[ErrorCode::AlreadyExists, ErrorCode::Pending, ErrorCode::StoreFull]);
                if exists && may_replace && self.replace(name) {
                    self.put_named(name, data, false);
                }
            }
        }
    }

    pub(super) fn create(&mut self) {
        let name = self.name();
        self.create_named(&name, true);
    }

    pub(super) fn create_named(&mut self, name: &str, may_replace: bool) {
        self.tally.op("create");
        let name = name.to_owned();
        let size = pick_size(&mut self.rng, self.ctx.max_size);
        let opts = PutOptions { evictable: self.rng.percent(25) };
        let mut obj = match self.client.create(&name, size, opts) {
            Ok(obj) => obj,
            Err(e) => {
                let exists = e.code() == Some(ErrorCode::AlreadyExists);
                self.error("create", &name, e, &[ErrorCode::AlreadyExists, ErrorCode::Pending, ErrorCode::StoreFull]);
                if exists && may_replace && self.replace(&name) {
                    self.create_named(&name, false);
                }
                return;
            }
        };
        self.tally.outcome("create", "ok");
        let seed = self.rng.next_u64();
        // Fill through the writable mapping mostly, sometimes with pwrite on the memfd.
        let filled = if self.rng.percent(85) {
            obj.as_mut_slice().map(|s| {
                fill(s, seed);
                digest(s)
            })
        } else {
            let data = content(size, seed);
            obj.file().and_then(|f| f.write_all_at(&data, 0).map_err(ClientError::from)).map(|()| digest(&data))
        };
        let want = match filled {
            Ok(d) => d,
            Err(e) => return self.fail(format!("filling {name} ({size} bytes): {e}")),
        };
        match self.rng.below(100) {
            0..90 => {
                self.tally.op("seal");
                // The id is ours from the create on: register before anyone can see it.
                self.register(obj.id(), want, &name);
                let mut sealed = obj.seal();
                if let Err(e) = &sealed
                    && e.code() == Some(ErrorCode::WritableMapping)
                {
                    // The client unmapped before asking: who still maps it writable, and
                    // does it last (a second seal after 100 ms)?
                    let ino = obj.file().ok().and_then(|f| f.metadata().ok()).map(|m| m.ino());
                    let mappers = ino.map(shared_writable_mappers).unwrap_or_default();
                    let first = e.to_string();
                    std::thread::sleep(BUSY_RETRY_AFTER);
                    sealed = obj.seal();
                    let message = format!(
                        "seal {name} ({size} bytes, memfd inode {ino:?}): {first}; shared writable mappings of it \
                         right after: {mappers:?}; sealing again {BUSY_RETRY_AFTER:?} later: {}",
                        outcome_text(&sealed)
                    );
                    self.busy(message, sealed.is_ok());
                }
                match sealed {
                    Ok(info) => {
                        self.tally.outcome("seal", "ok");
                        self.tally.bytes_written += size;
                        if info.size != size || info.state != ObjectState::Sealed {
                            self.fail(format!("seal {name}: {info:?} after creating {size} bytes"));
                        }
                        self.check_root("seal", &name, info.digest, want);
                    }
                    Err(e) => self.error("seal", &name, e, &[]),
                }
            }
            90..95 => {
                self.tally.op("abort");
                match obj.abort() {
                    Ok(()) => self.tally.outcome("abort", "ok"),
                    Err(e) => self.error("abort", &name, e, &[]),
                }
            }
            _ => {
                // Dropped unsealed: the client aborts it on drop.
                self.tally.op("drop-unsealed");
                drop(obj);
            }
        }
    }

    pub(super) fn get(&mut self) {
        self.tally.op("get");
        let name = self.name();
        let timeout = if self.rng.percent(80) { Duration::ZERO } else { self.rng.millis(1, 300) };
        let guard = match self.client.get(&name, timeout) {
            Ok(g) => g,
            Err(e) => return self.error("get", &name, e, &[ErrorCode::NotFound, ErrorCode::Timeout]),
        };
        self.tally.outcome("get", "ok");
        let Some(want) = self.verify(&name, &guard) else { return };
        if self.held.len() < MAX_HELD && self.rng.percent(25) {
            let until = Instant::now() + self.rng.millis(10, 2000);
            self.held.push(Held { guard, name, digest: want, until });
        }
    }

    /// Hashes a fresh mapping and compares it with its writer's digest; returns the digest.
    pub(super) fn verify(&mut self, name: &str, guard: &ObjectGuard) -> Option<[u8; 32]> {
        let info = guard.info().clone();
        if guard.len() as u64 != info.size {
            self.fail(format!("get {name}: mapped {} bytes of a {}-byte object", guard.len(), info.size));
        }
        let actual = digest(guard);
        let Some(want) = self.ctx.expected.wait(info.id, REGISTRATION_WAIT) else {
            self.fail(format!(
                "get {name}: object id {} ({} bytes) was served but no writer registered it within {REGISTRATION_WAIT:?}",
                info.id, info.size
            ));
            return None;
        };
        self.tally.digest_checks += 1;
        self.ctx.digest_checks.fetch_add(1, Ordering::Relaxed);
        self.tally.bytes_verified += info.size;
        if actual != want {
            self.fail(format!(
                "DIGEST MISMATCH get {name} id {} ({} bytes): the mapping hashes to {}, its writer wrote {}",
                info.id,
                info.size,
                hex(&actual),
                hex(&want)
            ));
        }
        self.check_root("get", name, info.digest, want);
        Some(want)
    }

    /// Drops held guards whose time came (all of them with `all`), hashing each again.
    pub(super) fn release_due(&mut self, all: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.held.len() {
            if all || self.held[i].until <= now {
                let h = self.held.swap_remove(i);
                self.tally.held_rechecks += 1;
                let actual = digest(&h.guard);
                if actual != h.digest {
                    self.fail(format!(
                        "DIGEST MISMATCH held {} id {}: the bytes changed under a lease to {} from {}",
                        h.name,
                        h.guard.info().id,
                        hex(&actual),
                        hex(&h.digest)
                    ));
                }
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn delete(&mut self) {
        self.tally.op("delete");
        let name = self.name();
        match self.client.delete(&name) {
            Ok(()) => self.tally.outcome("delete", "ok"),
            Err(e) => self.error("delete", &name, e, &[ErrorCode::NotFound, ErrorCode::Pending]),
        }
    }

    pub(super) fn stat(&mut self) {
        self.tally.op("stat");
        let name = self.name();
        match self.client.stat(&name) {
            Ok(info) => {
                self.tally.outcome("stat", "ok");
                if info.state == ObjectState::Sealed {
                    match self.ctx.expected.wait(info.id, REGISTRATION_WAIT) {
                        Some(want) => self.check_root("stat", &name, info.digest, want),
                        None => self.fail(format!("stat {name}: sealed object id {} has no writer", info.id)),
                    }
                }
            }
            Err(e) => self.error("stat", &name, e, &[ErrorCode::NotFound]),
        }
    }

    pub(super) fn list(&mut self) {
        self.tally.op("list");
        match self.client.list() {
            Ok(_) => self.tally.outcome("list", "ok"),
            Err(e) => self.error("list", "", e, &[]),
        }
    }
}
