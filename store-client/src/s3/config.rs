//! The S3 engine's settings: defaults, the `STORE_S3_*` environment variables, per-request
//! overrides, and the retry backoff they imply.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::S3Error;

/// Endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); unset means AWS.
pub const ENDPOINT_ENV: &str = "STORE_S3_ENDPOINT";
/// Region; else the standard chain (`AWS_REGION`, profile), else `us-east-1`.
pub const REGION_ENV: &str = "STORE_S3_REGION";
/// `true`/`false`: path-style addressing (default: true with an endpoint, else false).
pub const PATH_STYLE_ENV: &str = "STORE_S3_PATH_STYLE";
/// Attempts per request before giving up (default 8).
pub const MAX_ATTEMPTS_ENV: &str = "STORE_S3_MAX_ATTEMPTS";
/// Part size of the ranged GETs (`8MiB`).
pub const PART_SIZE_ENV: &str = "STORE_S3_PART_SIZE";
/// Ranged GETs in flight at once.
pub const CONCURRENCY_ENV: &str = "STORE_S3_CONCURRENCY";

/// Default part size of the ranged GETs (measured: see the module docs).
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Default number of ranged GETs in flight.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Smallest part size accepted (S3's multipart minimum, and far below it is all overhead).
pub const MIN_PART_SIZE: u64 = 64 * 1024;

/// An access key pair given explicitly instead of the standard chain.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `None`: path-style exactly when an endpoint is set.
    pub path_style: Option<bool>,
    /// `None`: the standard credential chain.
    pub credentials: Option<StaticCredentials>,
    pub part_size: u64,
    pub concurrency: usize,
    /// Attempts per request (and per part without progress) before giving up.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: None,
            credentials: None,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable `name` parsed, if set; a value that does not parse is an error naming it.
fn env_parsed<T: FromStr>(name: &'static str) -> Result<Option<T>, S3Error>
where
    T::Err: fmt::Display,
{
    env_nonempty(name)
        .map(|value| {
            value.parse().map_err(|e: T::Err| S3Error::InvalidSetting {
                name,
                why: e.to_string(),
                value: value.clone(),
            })
        })
        .transpose()
}

impl S3Config {
    /// Defaults overridden by the `STORE_S3_*` environment variables.
    pub fn from_env() -> Result<Self, S3Error> {
        let mut c = Self { endpoint: env_nonempty(ENDPOINT_ENV), region: env_nonempty(REGION_ENV), ..Self::default() };
        if let Some(v) = env_nonempty(PATH_STYLE_ENV) {
            c.path_style = Some(match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(S3Error::InvalidSetting {
                        name: PATH_STYLE_ENV,
                        value: v,
                        why: "expected true or false".into(),
                    });
                }
            });
        }
        if let Some(size) = env_parsed::<bytesize::ByteSize>(PART_SIZE_ENV)? {
            c.part_size = size.as_u64();
        }
        if let Some(n) = env_parsed(CONCURRENCY_ENV)? {
            c.concurrency = n;
        }
        if let Some(n) = env_parsed(MAX_ATTEMPTS_ENV)? {
            c.max_attempts = n;
        }
        c.validate()?;
        Ok(c)
    }

    /// Overrides the part size and concurrency where given.
    pub fn with_overrides(mut self, part_size: Option<u64>, concurrency: Option<usize>) -> Result<Self, S3Error> {
        if let Some(p) = part_size {
            self.part_size = p;
        }
        if let Some(n) = concurrency {
            self.concurrency = n;
        }
        self.validate()?;
        Ok(self)
    }

    pub(super) fn validate(&self) -> Result<(), S3Error> {
        if self.part_size < MIN_PART_SIZE {
            return Err(S3Error::InvalidSetting {
                name: PART_SIZE_ENV,
                value: self.part_size.to_string(),
                why: format!("at least {MIN_PART_SIZE} bytes"),
            });
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(S3Error::InvalidSetting {
                name: CONCURRENCY_ENV,
                value: self.concurrency.to_string(),
                why: "between 1 and 256".into(),
            });
        }
        if self.max_attempts == 0 {
            return Err(S3Error::InvalidSetting { name: "max_attempts", value: "0".into(), why: "at least 1".into() });
        }
        Ok(())
    }

    pub(super) fn endpoint_name(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS S3".into())
    }

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << attempt.min(16)).min(self.max_backoff);
        // Full jitter in [base/2, base], without a random number generator.
        static DRAWS: AtomicU64 = AtomicU64::new(0);
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
        let mixed = (seed ^ DRAWS.fetch_add(1, Ordering::Relaxed) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let frac = (mixed >> 54) as u32; // 0..1024
        base / 2 + base / 2 * frac / 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = S3Config::default();
        for attempt in 0..20 {
            let b = c.backoff(attempt);
            let base = c.initial_backoff.saturating_mul(1 << attempt.min(16)).min(c.max_backoff);
            assert!(b >= base / 2 && b <= base, "{attempt}: {b:?}");
        }
    }

    #[test]
    fn settings_are_validated() {
        assert!(S3Config::default().with_overrides(Some(1024), None).is_err());
        assert!(S3Config::default().with_overrides(None, Some(0)).is_err());
        let c = S3Config::default().with_overrides(Some(16 << 20), Some(4)).unwrap();
        assert_eq!((c.part_size, c.concurrency), (16 << 20, 4));
    }
}
