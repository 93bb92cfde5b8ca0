//! Link parameters: a host's rate, delay and loss, and the tbf settings they make.

use anyhow::bail;

/// One host's link to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// Rate of each direction in Mbit/s (10^6 bit/s); `None` leaves the link unshaped.
    pub rate_mbit: Option<u32>,
    /// MTU of the veth pair (both ends) and of the bridge.
    pub mtu: u32,
}

impl LinkSpec {
    /// A link shaped to `rate_mbit` in each direction.
    pub const fn shaped(rate_mbit: u32, mtu: u32) -> Self {
        Self { rate_mbit: Some(rate_mbit), mtu }
    }

    /// A link as fast as the machine can move packets.
    pub const fn unshaped(mtu: u32) -> Self {
        Self { rate_mbit: None, mtu }
    }

    /// The token bucket used for this link, if shaped.
    pub fn tbf(&self) -> Option<TbfParams> {
        self.rate_mbit.map(|rate| TbfParams::for_link(rate, self.mtu))
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(68..=65535).contains(&self.mtu) {
            bail!("MTU {} out of range 68..=65535", self.mtu);
        }
        if self.rate_mbit == Some(0) {
            bail!("rate 0 Mbit/s: use None for an unshaped link");
        }
        Ok(())
    }
}

impl Default for LinkSpec {
    /// Unshaped, MTU 1500.
    fn default() -> Self {
        Self::unshaped(1500)
    }
}

/// Parameters of one `tbf` qdisc (see the module documentation for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    pub rate_mbit: u32,
    /// Bucket size in bytes.
    pub burst_bytes: u64,
    /// Queue size in bytes (bucket included).
    pub limit_bytes: u64,
}

impl TbfParams {
    /// `burst = max(rate * 2 ms, 2 frames)`, `limit = burst + max(rate * 20 ms, 256 KiB)`.
    pub fn for_link(rate_mbit: u32, mtu: u32) -> Self {
        let bytes_per_sec = u64::from(rate_mbit) * 1_000_000 / 8;
        let frame = u64::from(mtu) + 14;
        let burst_bytes = (bytes_per_sec / 500).max(2 * frame);
        let limit_bytes = burst_bytes + (bytes_per_sec / 50).max(256 * 1024);
        Self { rate_mbit, burst_bytes, limit_bytes }
    }

    /// The arguments after `tc [-n NS]`: `qdisc replace dev DEV root tbf ...`.
    pub fn tc_args(&self, dev: &str) -> Vec<String> {
        [
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}mbit", self.rate_mbit),
            "burst",
            &self.burst_bytes.to_string(),
            "limit",
            &self.limit_bytes.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}
