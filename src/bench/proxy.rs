//! `weir bench proxy`: the public proxy's intake with auth, CORS and enrichment.

use std::time::Instant;

use super::harness::*;

/// How to load the proxy.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyBench {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// A MaxMind-format database for the country / region lookup (none = no lookup).
    #[arg(long)]
    geoip: Option<std::path::PathBuf>,
}

/// Starts `weir proxy` pinned to CPU 0 (write key, CORS and enrichment on, no router, so
/// what is measured is intake: auth, CORS, client address, user-agent parsing, validation
/// and the fsynced spool) and posts batches with HTTP Basic, an Origin, a browser's
/// user agent and X-Forwarded-For from a trusted peer (plus the GeoIP lookup with
/// `--geoip`).
pub fn run_proxy(opts: ProxyBench) -> anyhow::Result<()> {
    pin_self_to_cpu1();
    let (cport, pport, rport) = (free_port()?, free_port()?, free_port()?);
    let geoip = match &opts.geoip {
        Some(p) => format!(
            "geoip = {}\n",
            toml::Value::String(std::fs::canonicalize(p)?.display().to_string())
        ),
        None => String::new(),
    };
    let (dir, cfg) = bench_setup(&format!(
        "[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\nspool_max_bytes = 68719476736\n\
         [proxy]\nlisten = \"127.0.0.1:{pport}\"\ncors_origins = [\"http://shop.test\"]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         max_body_bytes = 5242880\n{geoip}[[proxy.keys]]\nkey = \"bench\"\nenv = \"web\"\n"
    ))?;
    let log = dir.path().join("proxy.log");
    let child = spawn_weir(&["proxy", "--config", &cfg], Some("0"), &log)?;
    let pid = child.id();
    let _guard = Spawned {
        children: vec![child],
        _dir: dir,
    };
    wait_for_port(pport, &log, "the proxy")?;
    let body = body(opts.batch, true);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let before = proc_usage(pid);
    let started = Instant::now();
    let post = Post {
        path: "/v1/events",
        headers: &[
            ("content-type", "application/x-ndjson"),
            ("authorization", "Basic YmVuY2g6"),
            ("origin", "http://shop.test"),
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            ),
            ("x-forwarded-for", "81.2.69.160"),
        ],
        expect: 202,
    };
    let (mut lat, requests) = rt.block_on(drive(pport, post, body, opts.connections, opts.duration, 0.0))?;
    let wall = started.elapsed().as_secs_f64();
    let after = proc_usage(pid);
    lat.sort_unstable();
    let events = requests * opts.batch as u64;
    println!(
        "weir bench proxy: {} connections, {} events/request (NDJSON, Basic key, Origin, browser user agent, X-Forwarded-For{}), {} s",
        opts.connections,
        opts.batch,
        if opts.geoip.is_some() { ", GeoIP" } else { "" },
        opts.duration
    );
    println!("  requests/s  {:>10.0}", requests as f64 / wall);
    println!(
        "  events/s    {:>10.0}   (202: validated, enriched, in the fsynced spool)",
        events as f64 / wall
    );
    print_latency(&lat);
    print_usage("proxy", before, after, wall);
    Ok(())
}
