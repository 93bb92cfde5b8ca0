//! `s3://bucket/key` URLs.

use std::fmt;
use std::str::FromStr;

use super::error::S3Error;

/// `s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    /// This URL's key with `name` appended under it as a prefix (`s3://b/p` + `x` = `s3://b/p/x`).
    pub fn join(&self, name: &str) -> S3Url {
        let key = self.key.trim_end_matches('/');
        let key = if key.is_empty() { name.to_owned() } else { format!("{key}/{name}") };
        S3Url { bucket: self.bucket.clone(), key }
    }
}

impl FromStr for S3Url {
    type Err = S3Error;
    fn from_str(s: &str) -> Result<Self, S3Error> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| S3Error::InvalidUrl(s.into()))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(|c: char| c.is_whitespace()) {
            return Err(S3Error::InvalidUrl(s.into()));
        }
        Ok(S3Url { bucket: bucket.into(), key: key.into() })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u: S3Url = "s3://bucket/a/b.bin".parse().unwrap();
        assert_eq!(u, S3Url { bucket: "bucket".into(), key: "a/b.bin".into() });
        assert_eq!(u.to_string(), "s3://bucket/a/b.bin");
        let p: S3Url = "s3://b/prefix/".parse().unwrap();
        assert_eq!(p.join("config.json").key, "prefix/config.json");
        assert_eq!("s3://b".parse::<S3Url>().unwrap().join("x").key, "x");
        for bad in ["http://b/k", "s3:///k", "s3://", "b/k"] {
            assert!(matches!(bad.parse::<S3Url>(), Err(S3Error::InvalidUrl(_))), "{bad}");
        }
    }
}
