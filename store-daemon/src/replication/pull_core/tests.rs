use std::net::{IpAddr, Ipv4Addr};

use store_client::manifest::Digest;

use super::*;

const MIB: u64 = 1 << 20;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn location(node: &str, held: ChunkSet) -> Location {
    let last = node.bytes().map(u32::from).sum::<u32>() as u8;
    Location {
        node: node.into(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)), 7000),
        size: held.len() * MIB,
        chunk_size: MIB,
        root: Digest([0; 32]),
        chunks: held,
    }
}

fn fetches(actions: &[Action]) -> Vec<(String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch(f) => Some((f.peer.clone(), f.index)),
            _ => None,
        })
        .collect()
}

fn core(me: &str, chunks: u64, relay: bool, has_origin: bool, t0: Instant) -> PullCore {
    PullCore::new(me, chunks * MIB, MIB, relay, [], has_origin, CoreConfig::default(), t0)
}

#[test]
fn the_source_is_asked_for_this_receivers_stripe_only_and_relays_for_the_rest() {
    let t0 = Instant::now();
    let mut c = core("b", 8, true, false, t0);
    // Receivers a, b, c, d: b is rank 1 of 4, its stripe chunks 2 and 3.
    let mut relay_a = ChunkSet::empty(8);
    relay_a.insert(0);
    c.located(
        t0,
        &[
            location("src", ChunkSet::full(8)),
            location("a", relay_a),
            location("c", ChunkSet::empty(8)),
            location("d", ChunkSet::empty(8)),
        ],
    );
    let asked = fetches(&c.poll(t0));
    let from_source: Vec<u64> = asked.iter().filter(|(p, _)| p == "src").map(|(_, i)| *i).collect();
    assert_eq!(from_source, vec![2], "one request to the source (swarm window 1), from b's stripe: {asked:?}");
    assert!(asked.contains(&("a".into(), 0)), "chunk 0 from the relay that has it: {asked:?}");
    assert_eq!(asked.len(), 2, "nothing else is asked of the source: {asked:?}");
}

#[test]
fn a_receiver_done_with_its_stripe_helps_from_the_tail_of_the_stripe_before() {
    let t0 = Instant::now();
    let mut c = core("b", 8, true, false, t0);
    c.located(t0, &[location("src", ChunkSet::full(8)), location("a", ChunkSet::empty(8))]);
    // b's stripe is chunks 4 to 7, asked one at a time (swarm window 1).
    for expected in 4..8 {
        let asked = fetches(&c.poll(t0));
        assert_eq!(asked, vec![("src".into(), expected)], "own stripe first, in order: {asked:?}");
        c.fetch_done(t0, "src", expected, FetchResult::Arrived { bytes: MIB, uploads: 1 });
    }
    // a works forwards from chunk 0; b helps from a's end backwards.
    let asked = fetches(&c.poll(t0));
    assert_eq!(asked, vec![("src".into(), 3)], "{asked:?}");
}

#[test]
fn a_receiver_without_a_stripe_asks_the_source_only_when_the_swarm_stalls() {
    let t0 = Instant::now();
    // Six receivers, four chunks: "a0" (rank 0) owns no chunk.
    let mut c = core("a0", 4, true, false, t0);
    let mut holders = vec![location("src", ChunkSet::full(4))];
    holders.extend((1..6).map(|i| location(&format!("b{i}"), ChunkSet::empty(4))));
    c.located(t0, &holders);
    assert!(fetches(&c.poll(t0)).is_empty(), "nothing of its own to take from the source");
    let after = CoreConfig::default().any_from_complete_after;
    let wake = c.poll_timeout().expect("a deadline");
    assert!(wake <= t0 + after);
    c.poll(t0 + after - Duration::from_millis(1));
    let asked = fetches(&c.poll(t0 + after));
    assert_eq!(asked.len(), 1, "nothing landed anywhere for {after:?}: {asked:?}");
    assert_eq!(asked[0].0, "src");
}

#[test]
fn a_lost_peer_stays_out_for_the_quarantine_even_when_the_scheduler_lists_it() {
    let t0 = Instant::now();
    let mut c = core("me", 4, false, false, t0);
    let holders = [location("x", ChunkSet::full(4))];
    c.located(t0, &holders);
    let asked = fetches(&c.poll(t0));
    assert!(!asked.is_empty());
    for (peer, index) in asked {
        c.fetch_done(t0, &peer, index, FetchResult::Transport { lost: true });
    }
    c.located(at(t0, 100), &holders);
    assert!(fetches(&c.poll(at(t0, 100))).is_empty(), "asked a quarantined peer");
    let later = t0 + CoreConfig::default().quarantine + Duration::from_millis(1);
    c.located(later, &holders);
    assert!(!fetches(&c.poll(later)).is_empty(), "not asked again after the quarantine");
}

#[test]
fn the_less_loaded_holder_is_asked_by_its_own_report() {
    let t0 = Instant::now();
    let mut c = core("me", 16, false, false, t0);
    c.located(t0, &[location("busy", ChunkSet::full(16)), location("idle", ChunkSet::full(16))]);
    let first = fetches(&c.poll(t0));
    for (peer, index) in &first {
        let uploads = if peer == "busy" { 40 } else { 0 };
        c.fetch_done(t0, peer, *index, FetchResult::Arrived { bytes: MIB, uploads });
    }
    let next = fetches(&c.poll(t0));
    // The idle holder's window fills first; the busy one gets what is left.
    assert_eq!(next.first().map(|(p, _)| p.as_str()), Some("idle"), "{next:?}");
    assert_eq!(next.iter().take(3).filter(|(p, _)| p == "idle").count(), 3, "{next:?}");
}

#[test]
fn chunks_no_peer_offers_go_to_the_origin_after_the_grace_then_the_origin_is_given_up() {
    let t0 = Instant::now();
    let config = CoreConfig::default();
    let mut c = core("me", 8, true, true, t0);
    c.located(t0, &[]);
    let origin_reads = |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::ReadOrigin { .. })).count();
    assert_eq!(origin_reads(&c.poll(t0)), 0);
    let grace = t0 + config.origin_grace;
    assert!(c.poll_timeout().is_some_and(|w| w <= grace));
    let actions = c.poll(grace);
    assert_eq!(origin_reads(&actions), config.origin_window);
    let indices: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ReadOrigin { index } => Some(*index),
            _ => None,
        })
        .collect();
    for index in indices {
        c.origin_done(index, None);
    }
    assert_eq!(origin_reads(&c.poll(grace)), 0, "three failures in a row give the origin up");
    // Nothing obtainable: the pull stalls, and says how much is missing.
    let stalled = grace + config.stalled_pull;
    c.poll(stalled);
    assert_eq!(c.finished(), Some(&Finished::Stalled { missing: 8 }));
}

#[test]
fn partial_peers_are_watched_one_request_at_a_time() {
    let t0 = Instant::now();
    let mut c = core("me", 8, true, false, t0);
    let mut held = ChunkSet::empty(8);
    held.insert(5);
    c.located(t0, &[location("p", held), location("src", ChunkSet::full(8))]);
    let watches = |actions: &[Action]| -> Vec<(String, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Watch { peer, known, .. } => Some((peer.clone(), *known)),
                _ => None,
            })
            .collect()
    };
    let first = c.poll(t0);
    assert_eq!(watches(&first), vec![("p".into(), 1)], "complete holders are not watched");
    assert!(watches(&c.poll(t0)).is_empty(), "one watch per peer at a time");
    for (peer, index) in fetches(&first) {
        c.fetch_done(t0, &peer, index, FetchResult::Arrived { bytes: MIB, uploads: 0 });
    }
    c.peer_reported(t0, "p", ChunkSet::from_iter_len(8, [5, 6, 7]), 0);
    let actions = c.poll(t0);
    assert_eq!(watches(&actions), vec![("p".into(), 3)]);
    assert!(fetches(&actions).contains(&("p".into(), 6)), "learned chunks are asked for: {actions:?}");
    c.watch_failed(t0, "p", false);
    assert!(watches(&c.poll(t0)).is_empty(), "a failed watch waits a refresh");
    assert_eq!(watches(&c.poll(t0 + CoreConfig::default().refresh)).len(), 1);
}

#[test]
fn the_scheduler_is_asked_once_per_refresh_and_never_twice_at_once() {
    let t0 = Instant::now();
    let mut c = core("me", 4, true, false, t0);
    let locates = |actions: &[Action]| actions.iter().filter(|a| **a == Action::Locate).count();
    assert_eq!(locates(&c.poll(t0)), 1);
    assert_eq!(locates(&c.poll(at(t0, 500))), 0, "one locate out at a time");
    c.locate_failed();
    assert_eq!(locates(&c.poll(at(t0, 500))), 1);
    c.located(at(t0, 501), &[]);
    assert_eq!(locates(&c.poll(at(t0, 550))), 0);
    assert_eq!(locates(&c.poll(at(t0, 600))), 1);
}

#[test]
fn a_deadline_once_passed_is_never_handed_out_again() {
    let t0 = Instant::now();
    let mut c = core("me", 4, true, false, t0);
    c.located(t0, &[location("a", ChunkSet::empty(4))]);
    let mut now = t0;
    for _ in 0..200 {
        if c.poll(now).contains(&Action::Locate) {
            c.located(now, &[location("a", ChunkSet::empty(4))]);
            c.poll(now);
        }
        if c.finished().is_some() {
            break;
        }
        let wake = c.poll_timeout().expect("deadline");
        assert!(wake > now, "busy loop at {:?}", now - t0);
        now = wake;
    }
    assert!(matches!(c.finished(), Some(Finished::Stalled { .. })), "{:?}", c.finished());
}

#[test]
fn a_large_swarm_uses_a_bounded_stable_set_of_peers() {
    let t0 = Instant::now();
    let holders: Vec<Location> = (0..500)
        .map(|i| location(&format!("n{i}"), ChunkSet::from_iter_len(64, [i as u64 % 64])))
        .chain([location("src", ChunkSet::full(64))])
        .collect();
    let mut c = PullCore::new("me", 64 * MIB, MIB, true, [], false, CoreConfig::default(), t0);
    c.located(t0, &holders);
    let first: Vec<String> = c.peers().map(str::to_owned).collect();
    assert_eq!(first.len(), CoreConfig::default().max_partial_peers + 1);
    c.located(at(t0, 100), &holders);
    let second: Vec<String> = c.peers().map(str::to_owned).collect();
    assert_eq!(first, second);
    let mut other = PullCore::new("you", 64 * MIB, MIB, true, [], false, CoreConfig::default(), t0);
    other.located(t0, &holders);
    let theirs: Vec<String> = other.peers().map(str::to_owned).collect();
    assert_ne!(first, theirs, "every receiver picks its own neighbours");
}
