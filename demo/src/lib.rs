//! What people run, built on the test harness (`store-tests`): the embedded demo, the main
//! job of the README ([`demo`], bin `store-demo`), the benches on emulated hosts
//! ([`cluster_bench`], [`workload_bench`]; bins `cluster-bench`, `workload-bench`, `s3-get`),
//! the reliability benches ([`soak`], [`chaos`]; bins `soak-bench`, `chaos-bench`, also run
//! briefly by this crate's tests) and the broadcast simulator ([`broadcast_sim`]).

pub mod broadcast_sim;
pub mod chaos;
pub mod cluster_bench;
pub mod demo;
pub mod soak;
pub mod workload_bench;
