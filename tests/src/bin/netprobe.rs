//! What `ping` and `iperf3` did for the multi-host harness, with nothing to install: one TCP
//! stream between two emulated hosts, measured at the receiver.
//!
//! - `netprobe serve ADDR:PORT`: listens, prints `listening` once bound, accepts one
//!   connection, reads it to EOF and answers `<bytes> <seconds>` (first byte to EOF), exits.
//! - `netprobe send ADDR:PORT SECONDS`: connects, writes for SECONDS (0: four bytes, a
//!   reachability probe), half-closes, reads the receiver's answer and prints one JSON line:
//!   `received_bytes`, `seconds`, `received_bps`, `retransmits` (the sender's TCP_INFO).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", addr] => serve(addr.parse().context("ADDR:PORT")?),
        ["send", addr, seconds] => {
            send(addr.parse().context("ADDR:PORT")?, Duration::from_secs_f64(seconds.parse().context("SECONDS")?))
        }
        _ => bail!("usage: netprobe serve ADDR:PORT | netprobe send ADDR:PORT SECONDS"),
    }
}

fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    writeln!(stream, "{total} {seconds}")?;
    Ok(())
}

fn send(addr: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_read_timeout(Some(IO_TIMEOUT + duration))?;
    if duration.is_zero() {
        stream.write_all(b"ping")?;
    } else {
        let buf = vec![0x5au8; 128 << 10];
        let start = Instant::now();
        while start.elapsed() < duration {
            stream.write_all(&buf)?;
        }
    }
    let retransmits = total_retransmits(&stream);
    stream.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let mut fields = answer.split_whitespace();
    let (Some(bytes), Some(seconds)) = (fields.next(), fields.next()) else {
        bail!("the receiver answered {answer:?}");
    };
    let bytes: u64 = bytes.parse()?;
    let seconds: f64 = seconds.parse()?;
    let bps = if seconds > 0.0 { bytes as f64 * 8.0 / seconds } else { 0.0 };
    println!(
        "{}",
        serde_json::json!({"received_bytes": bytes, "seconds": seconds, "received_bps": bps, "retransmits": retransmits})
    );
    Ok(())
}

/// Segments the kernel retransmitted on this connection so far (0 if TCP_INFO fails).
fn total_retransmits(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain old data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &raw mut len)
    };
    if rc == 0 { info.tcpi_total_retrans } else { 0 }
}
