//! Timing the cases on the running cluster: each method's processes started together, their
//! results collected, every copy checked against the source's digest.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::sys;

use super::fabric::Fabric;
use super::results::{Row, RunnerRun};
use super::roles::{S3GetResult, unix_ms};
use super::setup::{COOP_NAME, Case, Consumer, Method, WEIGHTS};
use store_tests::cluster::node_id;
use store_tests::netns::NsChild;
use store_tests::verify;

/// Waits until the scheduler lists exactly `nodes` as complete holders of `name`.
pub(super) fn wait_holders(fabric: &Fabric, name: &str, nodes: &[usize]) -> anyhow::Result<()> {
    let want: Vec<String> = nodes.iter().map(|&i| node_id(i)).collect();
    let listed = fabric.wait_until(Duration::from_secs(15), || {
        fabric.client(0).and_then(|c| Ok(c.locate(name)?)).is_ok_and(|l| {
            let mut have: Vec<String> = l.iter().filter(|l| l.is_complete()).map(|l| l.node.clone()).collect();
            have.sort();
            l.len() == want.len() && have == want
        })
    });
    if !listed {
        bail!("the scheduler did not list {name} on exactly {want:?} within 15 s");
    }
    Ok(())
}

/// What every measurement needs.
pub(super) struct Ctx<'a> {
    pub(super) fabric: &'a Fabric,
    pub(super) digest: &'a str,
    pub(super) weights_bytes: u64,
    pub(super) s_over_b: f64,
    pub(super) logs: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn timeout(&self, n: usize) -> Duration {
        Duration::from_secs_f64(self.s_over_b * n as f64 * 4.0 + 60.0)
    }

    pub(super) fn row(
        &self,
        case: Case,
        method: Method,
        n: usize,
        consumers: Vec<Consumer>,
        s3_bytes: Option<u64>,
        note: Option<String>,
    ) -> Row {
        let all_ok = !consumers.is_empty() && consumers.iter().all(|c| c.error.is_none() && c.digest_ok);
        let seconds = if all_ok { consumers.iter().map(|c| c.seconds).fold(0.0, f64::max) } else { f64::NAN };
        Row {
            case,
            method,
            n,
            seconds,
            mb_per_s: self.weights_bytes as f64 / seconds / 1e6,
            s_over_b: self.s_over_b,
            x_bound: seconds / self.s_over_b,
            s3_bytes,
            all_ok,
            consumers,
            note,
        }
    }

    /// Deletes `name` on `nodes` and waits until the scheduler no longer lists them.
    pub(super) fn clear(&self, name: &str, nodes: &[usize]) -> anyhow::Result<()> {
        for &i in nodes {
            match self.fabric.client(i)?.delete(name) {
                Ok(()) => {}
                Err(e) if e.code() == Some(store_client::wire::object::ErrorCode::NotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {name} on {}", node_id(i))),
            }
        }
        let ids: Vec<String> = nodes.iter().map(|&i| node_id(i)).collect();
        let gone = self.fabric.wait_until(Duration::from_secs(15), || {
            self.fabric
                .client(0)
                .and_then(|c| Ok(c.locate(name)?))
                .is_ok_and(|l| !l.iter().any(|l| ids.contains(&l.node)))
        });
        if !gone {
            bail!("{ids:?} still listed as holders of {name} 15 s after deleting it");
        }
        // Let the token buckets refill and the links drain before the next measurement.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Whether the bytes of `name` a consumer on `node` maps hash to the source's digest
    /// (through the node's socket, also for a network-namespace host).
    pub(super) fn held_ok(&self, node: usize, name: &str) -> bool {
        verify::held_matches(&self.fabric.socket(node), name, self.digest)
    }

    /// node-0 replicates the weights to `targets` at once.
    pub(super) fn replicate(&self, targets: &[usize], relay: bool) -> anyhow::Result<Vec<Consumer>> {
        let ids: Vec<String> = targets.iter().map(|&i| node_id(i)).collect();
        let outcomes = self
            .fabric
            .client(0)?
            .replicate(WEIGHTS, Some(ids.clone()), self.timeout(targets.len()), relay)
            .context("replicate request")?;
        Ok(targets
            .iter()
            .zip(&ids)
            .map(|(&i, id)| {
                let outcome = outcomes.iter().find(|o| &o.node == id).map(|o| &o.result);
                Consumer::of_pull(id, outcome, |c, r| {
                    if r.already_present {
                        c.error = Some("already present: nothing was transferred".into());
                    }
                    c.digest_ok = self.held_ok(i, WEIGHTS);
                })
            })
            .collect())
    }

    /// `k` consumers on `node` get the weights at the same moment; the node lacks them and
    /// pulls once. Returns the consumers and whether they all mapped the same memfd.
    pub(super) fn local_gets(&self, node: usize, k: usize) -> anyhow::Result<(Vec<Consumer>, bool)> {
        let socket = self.fabric.socket(node);
        let barrier = Arc::new(Barrier::new(k));
        let timeout = self.timeout(1);
        type Got = anyhow::Result<(Consumer, store_client::ObjectGuard)>;
        let results: Vec<Got> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..k)
                .map(|c| {
                    let barrier = barrier.clone();
                    let socket = &socket;
                    scope.spawn(move || -> Got {
                        let client = store_client::StoreClient::connect(socket).context("connecting a consumer")?;
                        barrier.wait();
                        let start = Instant::now();
                        let guard = client.get(WEIGHTS, timeout).context("get")?;
                        std::hint::black_box(guard.first());
                        let seconds = start.elapsed().as_secs_f64();
                        let who = format!("{}#{}", node_id(node), c + 1);
                        // Hashed below, once every consumer's clock has stopped.
                        Ok((Consumer { who, seconds, digest_ok: false, error: None, from: Default::default() }, guard))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("consumer panicked"))))
                .collect()
        });
        let mut consumers = Vec::new();
        let mut identities = Vec::new();
        for (c, r) in results.into_iter().enumerate() {
            match r {
                Ok((mut consumer, guard)) => {
                    identities.push(sys::file_identity(std::os::fd::AsFd::as_fd(guard.fd()))?);
                    consumer.digest_ok = verify::mapped_blake3(&guard) == self.digest;
                    consumers.push(consumer);
                }
                Err(e) => consumers.push(Consumer {
                    who: format!("{}#{}", node_id(node), c + 1),
                    seconds: f64::NAN,
                    digest_ok: false,
                    error: Some(format!("{e:#}")),
                    from: Default::default(),
                }),
            }
        }
        let shared = identities.len() == k && identities.windows(2).all(|w| w[0] == w[1]);
        Ok((consumers, shared))
    }

    /// One application process per entry of `nodes` downloads `url` from S3 through its
    /// node's link, all starting at the same moment.
    pub(super) fn s3_downloads(&self, nodes: &[usize], url: &str) -> anyhow::Result<Vec<Consumer>> {
        let start_at = unix_ms() + 700;
        let mut cmds = Vec::new();
        let mut names = Vec::new();
        for (c, &i) in nodes.iter().enumerate() {
            let who = if nodes.iter().filter(|&&j| j == i).count() > 1 {
                format!("{}#{}", node_id(i), c + 1)
            } else {
                node_id(i)
            };
            let mut cmd = self.fabric.command(i, "s3-get", self.logs)?;
            cmd.arg("role-s3-get")
                .arg("--url")
                .arg(url)
                .arg("--start-at-ms")
                .arg(start_at.to_string())
                .envs(self.fabric.s3_env(i));
            cmds.push(cmd);
            names.push(who);
        }
        let outputs = run_all(cmds, self.timeout(nodes.len()), self.logs);
        Ok(names
            .into_iter()
            .zip(outputs)
            .map(|(who, out)| {
                match out.and_then(|s| serde_json::from_str::<S3GetResult>(&s).context("parsing role-s3-get's result"))
                {
                    // role-s3-get hashed the buffer it downloaded, after its clock stopped.
                    Ok(r) => Consumer {
                        who,
                        seconds: r.seconds,
                        digest_ok: r.blake3 == self.digest && r.bytes == self.weights_bytes,
                        error: None,
                        from: [("s3".to_string(), r.bytes)].into(),
                    },
                    Err(e) => Consumer {
                        who,
                        seconds: f64::NAN,
                        digest_ok: false,
                        error: Some(format!("{e:#}")),
                        from: Default::default(),
                    },
                }
            })
            .collect())
    }

    /// Cooperative fetch of the weights into [`COOP_NAME`] on `targets`: the consumers, the
    /// request's seconds, and the bytes S3 served.
    pub(super) fn cooperative(&self, targets: &[usize], url: &str) -> anyhow::Result<(Vec<Consumer>, f64, u64)> {
        let ids: Vec<String> = targets.iter().map(|&i| node_id(i)).collect();
        let client = self.fabric.client(targets[0])?;
        let pull = client.pull_s3_cooperative(url, COOP_NAME, Some(ids.clone()), self.timeout(targets.len()))?;
        let consumers = targets
            .iter()
            .zip(&ids)
            .map(|(&i, id)| {
                let outcome = pull.nodes.iter().find(|o| &o.node == id).map(|o| &o.result);
                Consumer::of_pull(id, outcome, |c, r| {
                    if r.s3_bytes > 0 {
                        c.from.insert("s3".into(), r.s3_bytes);
                    }
                    c.digest_ok = self.held_ok(i, COOP_NAME);
                })
            })
            .collect();
        Ok((consumers, pull.total_seconds, pull.s3_bytes))
    }

    pub(super) fn transcribe(
        &self,
        node: usize,
        method: Method,
        model: &str,
        audio: &Path,
        max_length: Option<usize>,
    ) -> anyhow::Result<RunnerRun> {
        let mut cmd = self.fabric.command(node, "s2t-runner", self.logs)?;
        cmd.arg("role-transcribe")
            .arg("--model")
            .arg(model)
            .arg("--audio")
            .arg(audio)
            .env(store_client::SOCKET_ENV, self.fabric.socket(node))
            .envs(self.fabric.s3_env(node));
        if let Some(m) = max_length {
            cmd.arg("--max-length").arg(m.to_string());
        }
        let out = run_all(vec![cmd], self.timeout(1), self.logs)
            .pop()
            .context("no runner output")?
            .with_context(|| format!("{} on {}", method.label(), node_id(node)))?;
        let report: serde_json::Value = serde_json::from_str(&out).context("parsing the runner's report")?;
        let transcript = report.get("transcript").and_then(|t| t.as_str()).unwrap_or_default().to_string();
        Ok(RunnerRun { method, node: node_id(node), model: model.into(), transcript, report })
    }
}

/// Runs `cmds` at once and returns each one's stdout, or why it failed (non-zero exit,
/// or still running after `timeout`, then killed).
pub(super) fn run_all(cmds: Vec<Command>, timeout: Duration, logs: &Path) -> Vec<anyhow::Result<String>> {
    let deadline = Instant::now() + timeout;
    let mut running = Vec::new();
    for mut cmd in cmds {
        cmd.stdout(Stdio::piped());
        match NsChild::spawn(&mut cmd) {
            Ok(mut child) => {
                let (tx, rx) = mpsc::channel();
                if let Some(mut stdout) = child.stdout.take() {
                    std::thread::spawn(move || {
                        let mut s = String::new();
                        let _ = tx.send(stdout.read_to_string(&mut s).map(|_| s));
                    });
                }
                running.push(Ok((child, rx)));
            }
            Err(e) => running.push(Err(e)),
        }
    }
    running
        .into_iter()
        .map(|r| {
            let (mut child, rx) = r?;
            let out = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| anyhow::anyhow!("`{}` did not finish within {timeout:?}", child.description()))??;
            let status = child.wait()?;
            if !status.success() {
                bail!("`{}` failed ({status}); see its log in {}", child.description(), logs.display());
            }
            Ok(out)
        })
        .collect()
}
