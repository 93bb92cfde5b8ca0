//! The scheduler's Prometheus metrics (names in [`store_client::metrics`]). Table figures
//! (nodes alive, objects tracked) are read from the table at scrape time; counters are fed
//! where the requests are answered.

use prometheus::{IntCounter, IntGauge, Registry};
use store_client::metrics as names;

use crate::table::Table;

#[derive(Debug)]
pub struct SchedulerMetrics {
    registry: Registry,
    nodes_alive: IntGauge,
    objects_tracked: IntGauge,
    lookups: IntCounter,
    placements: IntCounter,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedulerMetrics {
    #[allow(clippy::expect_used)] // constant names and help texts, checked by the tests below
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric name");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique metric name");
            c
        };
        Self {
            nodes_alive: gauge(names::SCHEDULER_NODES_ALIVE, "Nodes whose lease is current."),
            objects_tracked: gauge(names::SCHEDULER_OBJECTS_TRACKED, "Object names with at least one holder."),
            lookups: counter(names::SCHEDULER_LOOKUPS, "Location lookups answered (locate and wait)."),
            placements: counter(names::SCHEDULER_PLACEMENTS, "Placement decisions made."),
            registry: registry.clone(),
        }
    }

    pub fn lookup(&self) {
        self.lookups.inc();
    }

    /// One placement decision was answered.
    pub fn placement(&self) {
        self.placements.inc();
    }

    /// Copies the table's figures into the registry.
    pub fn refresh(&self, table: &Table) {
        self.nodes_alive.set(table.node_count() as i64);
        self.objects_tracked.set(table.object_count() as i64);
    }

    pub fn render(&self) -> Vec<u8> {
        store_client::metrics::server::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_table_and_the_counters() {
        let m = SchedulerMetrics::new();
        m.lookup();
        m.lookup();
        m.placement();
        m.refresh(&Table::new(std::time::Duration::from_secs(3)));
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("store_scheduler_lookups_total 2"), "{text}");
        assert!(text.contains("store_scheduler_placements_total 1"), "{text}");
        assert!(text.contains("store_scheduler_nodes_alive 0"), "{text}");
        assert!(text.contains("store_scheduler_objects_tracked 0"), "{text}");
    }
}
