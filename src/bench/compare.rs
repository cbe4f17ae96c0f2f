//! `weir bench compare`: nginx answering `return 204` and the weir collector (ack after
//! fsync), each pinned to CPU 0, driven by the same `wrk` pinned to CPU 1, side by side.
//! Every weir run starts a collector of its own on an empty spool.
//! The performance goals are ratios to nginx on the same core, because the machines are
//! shared and noisy: an absolute figure moves with the neighbours, a ratio taken in one
//! run much less.
//!
//! Needs Debian's `nginx-light` and `wrk` (`apt-get install -y nginx-light wrk`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::harness::*;

/// How to run the comparison.
#[derive(clap::Args, Clone, Debug)]
pub struct CompareBench {
    /// Concurrent connections (wrk -c).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per run (wrk -d).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Runs of each case; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    requests_per_sec: f64,
    p99_ms: f64,
    /// CPU the server used per request, µs (steadier than requests/s on a shared machine).
    cpu_us_per_request: f64,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs the comparison and prints the table.
pub fn run_compare(opts: CompareBench) -> anyhow::Result<()> {
    if opts.runs == 0 || opts.connections == 0 || opts.duration == 0 {
        bail!("--runs, --connections and --duration must be at least 1");
    }
    let nginx = find(&["nginx"]).context("nginx is not installed: apt-get install -y nginx-light")?;
    let wrk = find(&["wrk"]).context("wrk is not installed: apt-get install -y wrk")?;
    let taskset = find(&["taskset"]).context("taskset is not installed (util-linux)")?;
    let dir = tempdir()?;
    let single = dir.path().join("single.json");
    let hundred = dir.path().join("hundred.json");
    std::fs::write(&single, body(1, false))?;
    std::fs::write(&hundred, body(100, false))?;
    let single_bytes = std::fs::metadata(&single)?.len();
    let hundred_bytes = std::fs::metadata(&hundred)?.len();

    let port = free_port()?;
    let (_nginx, nginx_pid) = start_nginx(&nginx, &taskset, port)?;
    let nginx_url = format!("http://127.0.0.1:{port}/v1/events");

    let run = |url: &str, pid: u32, body: &Path| -> anyhow::Result<Wrk> {
        let before = proc_usage(pid).map_or(0.0, |u| u.0);
        let mut w = run_wrk(&wrk, &taskset, dir.path(), url, body, &opts)?;
        let cpu = proc_usage(pid).map_or(0.0, |u| u.0) - before;
        w.cpu_us_per_request = cpu * 1e6 / (w.requests_per_sec * opts.duration as f64).max(1.0);
        Ok(w)
    };
    // Each weir run has a collector of its own, on an empty spool, as a collector whose
    // router keeps up: one collector for every run let its spool grow by GBs (no router
    // drains it here), and the later runs measured how the kernel copes with that (CPU
    // per 100-event request 64 -> 106 µs after ~7 GB, whatever the build).
    let mut rss = 0u64;
    let mut run_weir = |body: &Path| -> anyhow::Result<Wrk> {
        let (collector, url, _, pid) = start_collector(false)?;
        let w = run(&format!("{url}/v1/events"), pid, body)?;
        rss = rss.max(proc_usage(pid).map_or(0, |(_, rss)| rss));
        drop(collector);
        Ok(w)
    };
    // nginx and weir run by turns, one pair at a time, so a noisy neighbour (or a slow
    // drift of the machine) hits both sides of a pair alike; the ratio printed is the
    // median of the pairs' ratios.
    let mut case = |body: &Path| -> anyhow::Result<Pairs> {
        let mut pairs = Pairs::default();
        for _ in 0..opts.runs {
            pairs.nginx.push(run(&nginx_url, nginx_pid, body)?);
            pairs.weir.push(run_weir(body)?);
        }
        Ok(pairs)
    };
    let one = case(&single)?;
    let many = case(&hundred)?;

    println!(
        "weir bench compare: nginx `return 204` vs the weir collector (202 after fsync), each pinned to CPU 0; \
         wrk -t1 -c{} -d{}s on CPU 1; {} alternating pairs: medians, and the median of the pairs' ratios",
        opts.connections, opts.duration, opts.runs
    );
    println!(
        "  bodies: 1 event ({single_bytes} bytes), 100 events ({:.1} KB)",
        hundred_bytes as f64 / 1000.0
    );
    let (n1, w1) = (median(one.nginx.clone()), median(one.weir.clone()));
    let (n100, w100) = (median(many.nginx.clone()), median(many.weir.clone()));
    println!("  {:<32} {:>14} {:>14} {:>8}", "", "nginx", "weir", "ratio");
    let row = |what: &str, n: f64, w: f64, pairs: &Pairs| {
        println!("  {what:<32} {n:>14.0} {w:>14.0} {:>7.3}x", pairs.median_ratio());
    };
    row(
        "1 event/request, requests/s",
        n1.requests_per_sec,
        w1.requests_per_sec,
        &one,
    );
    row(
        "100-event requests, events/s",
        n100.requests_per_sec * 100.0,
        w100.requests_per_sec * 100.0,
        &many,
    );
    println!(
        "  {:<32} {:>11.2} ms {:>11.2} ms",
        "p99, 1 event/request", n1.p99_ms, w1.p99_ms
    );
    println!(
        "  {:<32} {:>11.2} ms {:>11.2} ms",
        "p99, 100-event requests", n100.p99_ms, w100.p99_ms
    );
    println!(
        "  {:<32} {:>11.2} us {:>11.2} us {:>7.3}x",
        "CPU per request, 1 event",
        n1.cpu_us_per_request,
        w1.cpu_us_per_request,
        n1.cpu_us_per_request / w1.cpu_us_per_request.max(1e-9)
    );
    println!(
        "  {:<32} {:>11.2} us {:>11.2} us {:>7.3}x",
        "CPU per event, 100-event requests",
        n100.cpu_us_per_request / 100.0,
        w100.cpu_us_per_request / 100.0,
        n100.cpu_us_per_request / w100.cpu_us_per_request.max(1e-9)
    );
    println!("  ratios of the pairs, 1 event:   {}", one.ratios_text());
    println!("  ratios of the pairs, 100 events: {}", many.ratios_text());
    println!("  weir collector peak RSS {:.1} MiB", rss as f64 / (1 << 20) as f64);
    Ok(())
}

/// nginx in one process (no master), on CPU 0, answering every request with 204, in a
/// directory of its own; killed when the guard drops. Returns its pid too.
fn start_nginx(nginx: &Path, taskset: &Path, port: u16) -> anyhow::Result<(Spawned, u32)> {
    let tmp = tempdir()?;
    let dir = tmp.path().to_path_buf();
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             client_body_buffer_size 64k;\n  keepalive_requests 100000000;\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}\n}}\n"
        ),
    )?;
    let log = dir.join("nginx.out");
    let mut cmd = Command::new(taskset);
    cmd.arg("-c")
        .arg("0")
        .arg(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let child = spawn_server(&mut cmd).context("cannot start nginx")?;
    let pid = child.id();
    let guard = Spawned {
        children: vec![child],
        _dir: tmp,
    };
    wait_for_port(port, &log, "nginx")?;
    Ok((guard, pid))
}

/// One wrk run of POSTs of `body` to `url`.
fn run_wrk(wrk: &Path, taskset: &Path, dir: &Path, url: &str, body: &Path, opts: &CompareBench) -> anyhow::Result<Wrk> {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             local f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body.display()
        ),
    )?;
    let out = die_with_us(&mut Command::new(taskset))
        .arg("-c")
        .arg("1")
        .arg(wrk)
        .args([
            "-t1",
            &format!("-c{}", opts.connections),
            &format!("-d{}s", opts.duration),
        ])
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Requests/s and the p99 latency from wrk's `--latency` output; an error when any
/// answer was not 2xx (a full spool's 503 is no throughput).
fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("the server answered errors: {}", line.trim());
    }
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec line")?
        .trim()
        .parse()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .context("no 99% latency line (wrk --latency)")?
        .trim();
    Ok(Wrk {
        requests_per_sec,
        p99_ms: duration_ms(p99).with_context(|| format!("latency {p99:?}"))?,
        cpu_us_per_request: 0.0,
    })
}

/// wrk's durations: `812.00us`, `1.10ms`, `2.01s`, `1.00m`.
fn duration_ms(s: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// The runs of one case, nginx's and weir's in the order they alternated.
#[derive(Default)]
struct Pairs {
    nginx: Vec<Wrk>,
    weir: Vec<Wrk>,
}

impl Pairs {
    /// weir's requests/s over nginx's, pair by pair.
    fn ratios(&self) -> Vec<f64> {
        self.nginx
            .iter()
            .zip(&self.weir)
            .map(|(n, w)| w.requests_per_sec / n.requests_per_sec.max(1.0))
            .collect()
    }

    /// The median of the pairs' ratios (the mean of the middle two for an even count).
    fn median_ratio(&self) -> f64 {
        let mut r = self.ratios();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    fn ratios_text(&self) -> String {
        let r: Vec<String> = self.ratios().iter().map(|r| format!("{r:.3}")).collect();
        r.join(" ")
    }
}

/// The run with the median requests/s (its p99 with it).
fn median(mut runs: Vec<Wrk>) -> Wrk {
    runs.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:1/v1/events\n  1 threads and 32 connections\n  Latency Distribution\n     50%  150.00us\n     75%  200.00us\n     90%  300.00us\n     99%    1.10ms\n  1967630 requests in 10.00s, 150.12MB read\nRequests/sec: 196763.00\nTransfer/sec:     15.01MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests_per_sec, 196763.0);
        assert!((w.p99_ms - 1.1).abs() < 1e-9);
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        let err = parse_wrk(&format!("{text}  Non-2xx or 3xx responses: 12\n")).unwrap_err();
        assert!(err.to_string().contains("Non-2xx or 3xx responses: 12"), "{err}");
    }

    #[test]
    fn the_ratio_is_the_median_of_the_pairs() {
        let w = |r: f64| Wrk {
            requests_per_sec: r,
            ..Wrk::default()
        };
        // Pair ratios 0.5, 0.2, 0.4: their median is 0.4; the ratio of the two medians
        // (50 / 150) would compare runs taken at different moments.
        let pairs = Pairs {
            nginx: vec![w(100.0), w(200.0), w(150.0)],
            weir: vec![w(50.0), w(40.0), w(60.0)],
        };
        assert_eq!(pairs.ratios_text(), "0.500 0.200 0.400");
        assert!((pairs.median_ratio() - 0.4).abs() < 1e-12);
        let even = Pairs {
            nginx: vec![w(100.0), w(100.0)],
            weir: vec![w(30.0), w(40.0)],
        };
        assert!((even.median_ratio() - 0.35).abs() < 1e-12);
    }
}
