//! Test harness: starts real daemons as processes. Placeholder until written.
