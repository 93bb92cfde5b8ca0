//! Where the model's three files come from: a directory (the weights mapped read-only), the
//! node's store (`store://PREFIX`: objects `PREFIX/config.json`, `PREFIX/model.safetensors`,
//! `PREFIX/vocab.json`, each a read-only shared mapping of the daemon's sealed memfd), or S3
//! (`s3://BUCKET/PREFIX`: the same three files downloaded into this process's memory).
//!
//! PyTorch `.bin` checkpoints are not read: they are pickles whose tensors live in a zip
//! archive, possibly compressed and with unaligned members, so using them in place would need
//! a pickle interpreter for transformers' `_rebuild_tensor_v2` records and still copy
//! misaligned or deflated members. Convert with `safetensors`' `convert.py` instead.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::Mmap;
use store_client::{ClientError, ObjectGuard, StoreClient};
use thiserror::Error;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const VOCAB_FILE: &str = "vocab.json";

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("S3 model source {url}: {source}")]
    S3 {
        url: String,
        #[source]
        source: store_client::s3::S3Error,
    },
    #[error("cannot open {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds PyTorch weights (pytorch_model.bin), which this runner does not read; convert them to model.safetensors"
    )]
    PytorchOnly { path: PathBuf },
    #[error("cannot reach the store daemon: {0}")]
    Connect(#[source] ClientError),
    #[error("store object `{name}`: {source}")]
    Object {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("invalid model source `{0}`: use a directory, store://PREFIX or s3://BUCKET/PREFIX")]
    Invalid(String),
}

/// A `--model` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Dir(PathBuf),
    Store(String),
    S3(String),
}

impl std::str::FromStr for ModelSource {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, SourceError> {
        if let Some(p) = s.strip_prefix("store://") {
            let p = p.trim_matches('/');
            if p.is_empty() {
                return Err(SourceError::Invalid(s.into()));
            }
            Ok(Self::Store(p.into()))
        } else if s.starts_with("s3://") {
            Ok(Self::S3(s.into()))
        } else if s.contains("://") || s.is_empty() {
            Err(SourceError::Invalid(s.into()))
        } else {
            Ok(Self::Dir(s.into()))
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::Store(p) => write!(f, "store://{p}"),
            Self::S3(u) => write!(f, "{u}"),
        }
    }
}

/// Bytes of one model file, however they are held.
#[derive(Debug)]
pub enum Bytes {
    /// A read-only mapping of a file.
    Mapped(Mmap),
    /// A read-only shared mapping of a store object, leased while this lives.
    Store(ObjectGuard),
    /// Read into memory (small files).
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Store(g) => g,
            Self::Owned(v) => v,
        }
    }
}

/// The three files of a model, alive as long as the model that borrows them.
#[derive(Debug)]
pub struct ModelFiles {
    pub config: Bytes,
    pub weights: Bytes,
    pub vocab: Bytes,
    /// `dir`, `store`, `s3`.
    pub kind: &'static str,
    /// Time to get the three files into the address space.
    pub transfer: Duration,
    _client: Option<StoreClient>,
}

impl ModelFiles {
    pub fn open(source: &ModelSource, store_timeout: Duration) -> Result<Self, SourceError> {
        match source {
            ModelSource::Dir(d) => Self::open_dir(d),
            ModelSource::Store(prefix) => {
                let client = StoreClient::connect_default().map_err(SourceError::Connect)?;
                Self::open_store(&client, prefix, store_timeout)
            }
            ModelSource::S3(url) => Self::open_s3(url),
        }
    }

    pub fn open_dir(dir: &Path) -> Result<Self, SourceError> {
        let start = Instant::now();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SourceError::File { path, source })
        };
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() && dir.join("pytorch_model.bin").exists() {
            return Err(SourceError::PytorchOnly { path: dir.to_owned() });
        }
        let file =
            File::open(&weights_path).map_err(|source| SourceError::File { path: weights_path.clone(), source })?;
        // SAFETY: the mapping is read-only and private to this process's view of the file.
        // Model files are treated as immutable while in use (as by every mmap-based loader);
        // truncating the file underneath would raise SIGBUS, modifying it would change weights
        // mid-inference, both outside this program's contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| SourceError::File { path: weights_path, source })?;
        let config = Bytes::Owned(read(CONFIG_FILE)?);
        let vocab = Bytes::Owned(read(VOCAB_FILE)?);
        Ok(Self { config, weights: Bytes::Mapped(map), vocab, kind: "dir", transfer: start.elapsed(), _client: None })
    }

    pub fn open_store(client: &StoreClient, prefix: &str, timeout: Duration) -> Result<Self, SourceError> {
        let start = Instant::now();
        let get = |file: &str| {
            let name = format!("{prefix}/{file}");
            client.get(&name, timeout).map(Bytes::Store).map_err(|source| SourceError::Object { name, source })
        };
        let config = get(CONFIG_FILE)?;
        let weights = get(WEIGHTS_FILE)?;
        let vocab = get(VOCAB_FILE)?;
        Ok(Self { config, weights, vocab, kind: "store", transfer: start.elapsed(), _client: Some(client.clone()) })
    }

    /// Downloads the three files under `s3://BUCKET/PREFIX` into this process's memory with
    /// the store's S3 engine (settings from `STORE_S3_*` and the AWS environment): the
    /// comparison case, where every consumer pays a full download.
    pub fn open_s3(url: &str) -> Result<Self, SourceError> {
        use store_client::s3::{S3Config, S3Url, download_prefix_blocking};
        let start = Instant::now();
        let s3_err = |source| SourceError::S3 { url: url.to_owned(), source };
        let prefix: S3Url = url.parse().map_err(s3_err)?;
        let config = S3Config::from_env().map_err(s3_err)?;
        let mut files = download_prefix_blocking(config, &prefix, &[CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE])
            .map_err(s3_err)?
            .into_iter()
            .map(|(bytes, _)| Bytes::Owned(bytes));
        let mut next = || files.next().ok_or_else(|| SourceError::Invalid(url.to_owned()));
        let (config, weights, vocab) = (next()?, next()?, next()?);
        Ok(Self { config, weights, vocab, kind: "s3", transfer: start.elapsed(), _client: None })
    }

    /// Bytes of all three files.
    pub fn total_bytes(&self) -> usize {
        self.config.len() + self.weights.len() + self.vocab.len()
    }

    /// BLAKE3 (hex) of the weight bytes this process holds: every byte of the store mapping,
    /// the file mapping or the buffer downloaded from S3, hashed in 4 MiB subtrees on all
    /// cores (the result is plain BLAKE3 of the content, what `b3sum` prints). Reads all of
    /// the weights: not part of any timing.
    pub fn weights_blake3(&self) -> String {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let manifest = store_client::Manifest::compute(&self.weights, store_client::DEFAULT_CHUNK_SIZE, threads)
            .expect("the default chunk size is a valid manifest chunk size");
        manifest.root.to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!("store://models/m/".parse::<ModelSource>().unwrap(), ModelSource::Store("models/m".into()));
        assert_eq!("/tmp/m".parse::<ModelSource>().unwrap(), ModelSource::Dir("/tmp/m".into()));
        assert!(matches!("s3://b/p".parse::<ModelSource>().unwrap(), ModelSource::S3(_)));
        assert!("http://x".parse::<ModelSource>().is_err());
        assert!("store://".parse::<ModelSource>().is_err());
    }

    #[test]
    fn a_bad_s3_url_is_a_clear_error() {
        let e = ModelFiles::open(&ModelSource::S3("s3://".into()), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("S3 model source s3://: invalid S3 URL"), "{e}");
    }

    #[test]
    fn a_missing_directory_names_the_file() {
        let e = ModelFiles::open_dir(Path::new("/nonexistent/model")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/model/model.safetensors"), "{e}");
    }
}
