//! `ember admin bench`: write load straight from the client library to storage (no FUSE, no
//! page cache), to measure replication: latency percentiles at a queue depth, or throughput.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use ember_client::{ClientConfig, EmberClient, Retry};
use ember_proto::meta::{CloseReq, CreateReq, UnlinkReq};
use ember_types::{InodeId, Layout};

use crate::Failure;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Bytes per write.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// How long to write.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Size of the file region written at random offsets, in MiB.
    #[arg(long, default_value_t = 64)]
    pub region_mib: u64,
    /// Write the file front to back instead of at random offsets.
    #[arg(long)]
    pub sequential: bool,
    /// Offer this many writes per second in total (open loop, at most `depth` in flight) instead
    /// of writing as fast as the cluster answers. A write that could not start when it was due
    /// (every slot busy) counts its latency from then, so queueing behind slow writes shows.
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(serde::Serialize)]
struct BenchReport {
    size: usize,
    depth: usize,
    sequential: bool,
    rate: Option<f64>,
    writes: usize,
    seconds: f64,
    iops: f64,
    mib_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

pub async fn run(mgmtd: &str, args: BenchArgs, json: bool) -> Result<(), Failure> {
    if args.size == 0 || args.depth == 0 || args.seconds <= 0.0 || args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(Failure { code: crate::EXIT_USAGE, error: anyhow::anyhow!("size, depth, seconds and rate must be positive") });
    }
    let client = EmberClient::connect(ClientConfig::new(mgmtd)).await?;
    let name = format!(".ember-bench-{}-{}", std::process::id(), now_nanos());
    let create = CreateReq {
        parent: InodeId::ROOT.0,
        name: name.clone().into_bytes(),
        mode: 0o600,
        exclusive: true,
        client_id: client.client_id(),
        ..Default::default()
    };
    let opened = client.meta(&create, Retry::OnlyIfNotSent).await?;
    let attr = opened.attr.ok_or_else(|| anyhow::anyhow!("create returned no attributes"))?;
    let layout = attr.layout.as_ref().map(ember_proto::layout_from_msg).transpose()?;
    let layout = layout.ok_or_else(|| anyhow::anyhow!("the bench file has no layout"))?;
    eprintln!("ember bench: {} B writes, depth {}, {:.0} s ...", args.size, args.depth, args.seconds);
    let result = drive(&client, InodeId(attr.inode), &layout, &args).await;
    let close = CloseReq { inode: attr.inode, session_id: opened.session_id, written_end: None, mtime_ns: None };
    client.meta(&close, Retry::Idempotent).await?;
    client.meta(&UnlinkReq { parent: InodeId::ROOT.0, name: name.into_bytes() }, Retry::OnlyIfNotSent).await?;
    let (latencies, elapsed) = result?;
    let report = summarize(&args, latencies, elapsed);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} writes of {} B at depth {} in {:.1} s: {:.0} IOPS, {:.1} MiB/s, latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
            report.writes, report.size, report.depth, report.seconds, report.iops, report.mib_per_s, report.p50_us, report.p99_us, report.p999_us
        );
    }
    Ok(())
}

/// Runs `depth` writers until the time is up; returns every write's latency.
async fn drive(client: &Arc<EmberClient>, inode: InodeId, layout: &Layout, args: &BenchArgs) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let next = Arc::new(AtomicU64::new(0));
    let ticket = Arc::new(AtomicU64::new(0));
    let data = Bytes::from(vec![0x5a; args.size]);
    let slots = ((args.region_mib << 20) / args.size as u64).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.depth {
        let (client, layout, next, ticket, data) = (client.clone(), layout.clone(), next.clone(), ticket.clone(), data.clone());
        let (size, sequential, rate) = (args.size as u64, args.sequential, args.rate);
        let mut rng = now_nanos() ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let slot = if sequential { next.fetch_add(1, Ordering::Relaxed) } else { xorshift(&mut rng) % slots };
                let t0 = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(ticket.fetch_add(1, Ordering::Relaxed) as f64 / rate);
                        if due >= deadline {
                            break;
                        }
                        if Instant::now() < due {
                            // The timer wakes up to a millisecond late: that is not the cluster's time.
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due
                        }
                    }
                    None => Instant::now(),
                };
                client.write(inode, &layout, slot * size, data.clone()).await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, ember_types::Status>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined??);
    }
    Ok((all, started.elapsed()))
}

fn summarize(args: &BenchArgs, mut lat: Vec<Duration>, elapsed: Duration) -> BenchReport {
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e6
    };
    let secs = elapsed.as_secs_f64();
    BenchReport {
        size: args.size,
        depth: args.depth,
        sequential: args.sequential,
        rate: args.rate,
        writes: lat.len(),
        seconds: secs,
        iops: lat.len() as f64 / secs,
        mib_per_s: (lat.len() * args.size) as f64 / secs / 1_048_576.0,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
