//! "The copy is right", checked on the bytes: the BLAKE3 of what a consumer actually maps
//! or holds, never the digest a daemon reports about an object. A receiver's reported
//! digest is the root of the manifest it was sent (equal to the source's by construction),
//! so comparing it to the source's cannot fail; hashing the mapping can.
//!
//! Sockets are files: a process in the root namespace reaches the daemon of a network
//! namespace host through its socket path, and the memfd it gets back is the same object
//! that host's consumers map.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use store_client::{ObjectGuard, ObjectState, StoreClient};

/// BLAKE3 of `bytes`, in hex.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// BLAKE3 of the bytes of the file at `path`, read through.
pub fn file_blake3(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).with_context(|| format!("reading {}", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// BLAKE3 of every byte of a consumer's read-only mapping.
pub fn mapped_blake3(guard: &ObjectGuard) -> String {
    blake3_hex(&guard[..])
}

/// BLAKE3 of the bytes of `name` as a consumer of this daemon maps them (`get`, the
/// read-only mapping of the sealed memfd, every byte hashed).
///
/// The object must already be held here: a `get` of a missing object has a cluster daemon
/// pull it first, which would make a failed transfer look like a good copy.
pub fn held_blake3(client: &StoreClient, name: &str) -> anyhow::Result<String> {
    let info = client.stat(name).with_context(|| format!("{name} is not held by this daemon"))?;
    if info.state != ObjectState::Sealed {
        bail!("{name} is not sealed here ({:?})", info.state);
    }
    let guard = client.get(name, Duration::ZERO).with_context(|| format!("mapping {name}"))?;
    if guard.info().id != info.id {
        bail!("{name} was replaced between stat and get");
    }
    Ok(mapped_blake3(&guard))
}

/// [`held_blake3`] through a new connection to the daemon at `socket`.
pub fn held_blake3_at(socket: &Path, name: &str) -> anyhow::Result<String> {
    let client = StoreClient::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    held_blake3(&client, name)
}

/// Whether the bytes of `name` held by the daemon at `socket` hash to `want` (hex).
pub fn held_matches(socket: &Path, name: &str, want: &str) -> bool {
    held_blake3_at(socket, name).is_ok_and(|d| d == want)
}
