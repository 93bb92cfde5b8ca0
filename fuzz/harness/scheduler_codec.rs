//! Target `scheduler_codec`: the daemon <-> scheduler wire types of `store_client::wire::scheduler`
//! and the scheduler's state machines behind them. The first input byte picks the side; the
//! rest is a stream of length-prefixed frames.
//!
//! - Even: each frame is decoded as a [`SchedulerRequest`] (as the scheduler reads it) and
//!   applied, one virtual second apart, to a [`Table`] and a [`Planner`] the way
//!   `scheduler::server` answers it: registration, heartbeats, announces, withdrawals,
//!   lookups, transfer reports and placement with the server's own limits (node identities
//!   are not checked: there is no certificate here; `Wait` is answered at once). Expiry runs
//!   before every request.
//! - Odd: each frame is decoded as a [`SchedulerResponse`] (as a daemon reads it).
//!
//! Properties: nothing panics; every decoded message and every answer round-trips (compared
//! as bytes, `f64` fields may be NaN); what the table answers stays consistent: located copies
//! carry well-formed chunk sets of the right length, complete ones first, `is_available`
//! agrees with them, the node list matches the node count; a placement names only
//! registered nodes that meet the request's pin and labels, and never more tasks than asked.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use scheduler::placement::{PlacementRequest, Planner};
use scheduler::server::MAX_PLACE_COUNT;
use scheduler::table::{Table, TableError};
use store_client::chunkset::ChunkSet;
use store_client::frame::{self, FrameBuffer};
use store_client::manifest::{Digest, chunk_count};
use store_client::wire::node::{Holding, NodeInfo};
use store_client::wire::placement::{NodeEstimate, PlaceSpec, Placement, TransferReport};
use store_client::wire::scheduler::{SchedulerRequest, SchedulerResponse};

/// `scheduler::server`'s limit on a task's expected run time.
const MAX_TASK_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let wire = frame::encode(msg);
    let again: T = frame::decode(&wire[4..]).unwrap_or_else(|e| panic!("{msg:?} does not decode back: {e}"));
    assert_eq!(frame::encode(&again), wire, "{msg:?} re-encodes differently");
}

fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut fb = FrameBuffer::new();
    fb.spare(stream.len())[..stream.len()].copy_from_slice(stream);
    fb.filled(stream.len());
    let mut out = Vec::new();
    while let Ok(Some(body)) = fb.next_frame() {
        out.push(body.to_vec());
    }
    out
}

/// The state behind the scheduler's endpoint.
struct Scheduler {
    table: Table,
    planner: Planner,
}

impl Scheduler {
    /// Answers one request as `scheduler::server` does.
    fn handle(&mut self, now: Instant, req: SchedulerRequest) -> SchedulerResponse {
        let refused = |e: TableError| match e {
            TableError::UnknownNode(_) => SchedulerResponse::UnknownNode,
            other => SchedulerResponse::Error { message: other.to_string() },
        };
        let done = |r: Result<(), TableError>| r.map_or_else(refused, |()| SchedulerResponse::Ok);
        match req {
            SchedulerRequest::Register { mut node, holdings } => {
                if node.addr.ip().is_unspecified() {
                    node.addr.set_ip(Ipv4Addr::LOCALHOST.into());
                }
                done(self.table.register(now, node, holdings).map(drop))
            }
            SchedulerRequest::Heartbeat { node, free } => done(self.table.heartbeat(now, &node, free)),
            SchedulerRequest::Announce { node, holding } => done(self.table.announce(now, &node, holding).map(drop)),
            SchedulerRequest::Withdraw { node, name } => done(self.table.withdraw(now, &node, &name).map(drop)),
            SchedulerRequest::Locate { name } | SchedulerRequest::Wait { name, .. } => {
                SchedulerResponse::Located(self.table.locate(&name))
            }
            SchedulerRequest::Nodes => SchedulerResponse::Nodes(self.table.nodes(now)),
            SchedulerRequest::Place { spec } => self.place(now, spec),
            SchedulerRequest::TransferReport { node, report } => {
                self.planner.observe_transfer(&node, &report);
                SchedulerResponse::Ok
            }
        }
    }

    fn place(&mut self, now: Instant, spec: PlaceSpec) -> SchedulerResponse {
        let refuse = |message: &str| SchedulerResponse::Error { message: message.into() };
        if spec.count == 0 || spec.count > MAX_PLACE_COUNT {
            return refuse("count out of range");
        }
        if !(spec.task_seconds.is_finite() && (0.0..=MAX_TASK_SECONDS).contains(&spec.task_seconds)) {
            return refuse("task seconds out of range");
        }
        let mut needs: Vec<(String, u64)> = Vec::new();
        let mut held: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for name in &spec.needs {
            if store_client::name::validate(name).is_err() {
                return refuse("invalid object name");
            }
            if needs.iter().any(|(n, _)| n == name) {
                continue;
            }
            let Some((size, by_node)) = self.table.held_bytes(name) else { return refuse("nobody holds it") };
            needs.push((name.clone(), size));
            for (node, bytes) in by_node {
                held.entry(node).or_default().insert(name.clone(), bytes);
            }
        }
        let infos: BTreeMap<String, NodeInfo> = self.table.node_infos().map(|i| (i.id.clone(), i.clone())).collect();
        let req = PlacementRequest {
            needs,
            labels: spec.labels.clone(),
            resources: spec.resources.clone(),
            pinned: spec.pinned.clone(),
            count: spec.count,
            task_seconds: spec.task_seconds,
        };
        let views: Vec<_> =
            infos.values().map(|i| self.planner.view(now, i, held.remove(&i.id).unwrap_or_default())).collect();
        let (tasks, ranked) = self.planner.place(now, &req, &views);
        assert!(tasks.len() <= spec.count as usize, "{} tasks placed, {} asked", tasks.len(), spec.count);
        for c in tasks.iter().chain(&ranked) {
            let info = infos.get(&c.node).unwrap_or_else(|| panic!("placed on unknown node {:?}", c.node));
            assert!(spec.pinned.as_ref().is_none_or(|p| *p == c.node), "pin ignored: {:?}", c.node);
            assert!(spec.labels.iter().all(|(k, v)| info.labels.get(k) == Some(v)), "labels ignored: {:?}", c.node);
        }
        let wire = |c: scheduler::placement::Candidate| NodeEstimate {
            addr: infos[&c.node].addr,
            node: c.node,
            missing_bytes: c.missing_bytes,
            missing: c.missing,
            transfer_seconds: c.transfer_seconds,
            queued_seconds: c.queued_seconds,
            estimated_start_seconds: c.estimated_start_seconds,
            inbound_bytes_per_second: c.bandwidth,
            bandwidth_assumed: c.bandwidth_assumed,
        };
        SchedulerResponse::Placed(Placement {
            tasks: tasks.into_iter().map(wire).collect(),
            ranked: ranked.into_iter().map(wire).collect(),
        })
    }

    /// The table's answers about `name` agree with each other.
    fn check_object(&self, name: &str) {
        let located = self.table.locate(name);
        for l in &located {
            assert!(l.chunks.is_valid(), "malformed chunk set located: {l:?}");
            assert_eq!(l.chunks.len(), chunk_count(l.size, l.chunk_size), "chunk set of the wrong length: {l:?}");
        }
        let complete = located.iter().take_while(|l| l.is_complete()).count();
        assert!(located[complete..].iter().all(|l| !l.is_complete()), "complete copies are not listed first");
        assert_eq!(self.table.is_available(name), complete > 0);
        assert_eq!(self.table.held_bytes(name).is_some(), !located.is_empty());
    }
}

fn names_of(req: &SchedulerRequest) -> Vec<String> {
    match req {
        SchedulerRequest::Register { holdings, .. } => holdings.iter().map(|h| h.name.clone()).collect(),
        SchedulerRequest::Announce { holding, .. } => vec![holding.name.clone()],
        SchedulerRequest::Withdraw { name, .. }
        | SchedulerRequest::Locate { name }
        | SchedulerRequest::Wait { name, .. } => vec![name.clone()],
        SchedulerRequest::Place { spec } => spec.needs.clone(),
        SchedulerRequest::TransferReport { report, .. } => vec![report.name.clone()],
        SchedulerRequest::Heartbeat { .. } | SchedulerRequest::Nodes => Vec::new(),
    }
}

pub fn run(data: &[u8]) {
    let Some((&side, stream)) = data.split_first() else { return };
    if side % 2 == 1 {
        for body in frames(stream) {
            if let Ok(resp) = frame::decode::<SchedulerResponse>(&body) {
                round_trips(&resp);
            }
        }
        return;
    }
    let start = Instant::now();
    let mut s = Scheduler { table: Table::new(Duration::from_secs(3)), planner: Planner::new(125e6) };
    for (i, body) in frames(stream).iter().enumerate() {
        let Ok(req) = frame::decode::<SchedulerRequest>(body) else { continue };
        round_trips(&req);
        let now = start + Duration::from_secs(i as u64);
        s.table.expire(now);
        let names = names_of(&req);
        let resp = s.handle(now, req);
        round_trips(&resp);
        for name in names.iter().take(16) {
            s.check_object(name);
        }
        assert_eq!(s.table.nodes(now).len(), s.table.node_count());
    }
}

/// Request and response streams, for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let node = |id: &str, port: u16| NodeInfo {
        id: id.into(),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        labels: BTreeMap::from([("site".to_string(), "edge".to_string())]),
        capacity: 1 << 30,
        free: 1 << 29,
        resources: BTreeMap::from([("cpu".to_string(), 2)]),
    };
    let holding = |name: &str, held: &[u64]| Holding {
        name: name.into(),
        size: 5000,
        chunk_size: 1024,
        root: Digest([3; 32]),
        chunks: ChunkSet::from_iter_len(5, held.iter().copied()),
    };
    let spec = PlaceSpec {
        needs: vec!["models/m".into()],
        labels: BTreeMap::from([("site".to_string(), "edge".to_string())]),
        count: 3,
        ..Default::default()
    };
    let requests = [
        SchedulerRequest::Register { node: node("n1", 7001), holdings: vec![holding("models/m", &[0, 1, 2, 3, 4])] },
        SchedulerRequest::Register { node: node("n2", 7002), holdings: vec![] },
        SchedulerRequest::Announce { node: "n2".into(), holding: holding("models/m", &[1, 3]) },
        SchedulerRequest::Heartbeat { node: "n1".into(), free: 1 << 20 },
        SchedulerRequest::Locate { name: "models/m".into() },
        SchedulerRequest::Place { spec },
        SchedulerRequest::TransferReport {
            node: "n2".into(),
            report: TransferReport {
                name: "models/m".into(),
                bytes: 5000,
                seconds: 0.01,
                from: BTreeMap::from([("n1".to_string(), 5000)]),
                node_bytes: 5000,
            },
        },
        SchedulerRequest::Withdraw { node: "n1".into(), name: "models/m".into() },
        SchedulerRequest::Wait { name: "models/m".into(), timeout_ms: 10 },
        SchedulerRequest::Nodes,
        SchedulerRequest::Heartbeat { node: "gone".into(), free: 0 },
    ];
    let mut out = vec![[vec![0], requests.iter().flat_map(frame::encode).collect()].concat()];
    let mut s = Scheduler { table: Table::new(Duration::from_secs(3)), planner: Planner::new(125e6) };
    let now = Instant::now();
    let responses: Vec<SchedulerResponse> = requests.into_iter().map(|r| s.handle(now, r)).collect();
    out.push([vec![1], responses.iter().flat_map(frame::encode).collect()].concat());
    out
}
