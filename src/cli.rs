//! The command line: every command, subcommand and flag (clap); what each does is in
//! [`crate::commands`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::bench;

/// weir — a self-hosted clickstream pipeline: collector, router, loader and event catalog.
#[derive(Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ConfigArg {
    /// The config file (TOML); `weir config example` prints one.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The catalog directory (instead of the config's `catalog`; `weir up` without
    /// either uses the built-in demo catalog).
    #[arg(long, value_name = "DIR")]
    pub(crate) catalog: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Everything in one process on embedded defaults: collector, public proxy, router
    /// with its console, loader and Arrow Flight.
    Up {
        /// Data directory (spool, log, buffers, warehouse). Default: ./weir-data.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run only the collector.
    Collector {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the public proxy: a collector whose public listener takes events from
    /// browsers and apps with write keys, CORS and enrichment (`[proxy]`).
    Proxy {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run only the router.
    Router {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The loader: without a subcommand, the deployed component (loads closed hours as
    /// they close, serves Arrow Flight, /healthz, /readyz and /metrics on loader.listen).
    #[command(args_conflicts_with_subcommands = true)]
    Loader {
        #[command(subcommand)]
        command: Option<LoaderCommand>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The event catalog: init, check, diff, changelog, export.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Print or check a config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Generate a typed client library ("langpack") for one environment from the catalog.
    Codegen {
        /// Target language.
        #[arg(long, value_enum)]
        lang: weir_proto::codegen::Lang,
        /// The environment the langpack sends as.
        #[arg(long)]
        env: String,
        /// The catalog directory.
        #[arg(long)]
        catalog: PathBuf,
        /// Where to write the langpack (created when missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Load generators and benchmarks.
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
#[cfg(feature = "bench")]
pub(crate) enum BenchCommand {
    /// Drive a collector over HTTP or its datagram socket and report events/s, latency,
    /// CPU and peak RSS.
    Collector(bench::CollectorBench),
    /// Load one hour of demo events from a buffer into Parquet and report rows/s,
    /// peak RSS and Parquet size.
    Loader(bench::LoaderBench),
    /// Send a router protobuf batches as collectors do: events/s through intake, log and
    /// hourly buffer.
    Router(bench::RouterBench),
    /// End to end at a steady rate: collector accept -> router -> RabbitMQ -> a consumer;
    /// reports the latency percentiles.
    Fanout(bench::FanoutBench),
    /// Drive the proxy (write key, CORS, enrichment) with 100-event batches.
    Proxy(bench::ProxyBench),
    /// Kafka mode beside HTTP mode in one run: collector -> Kafka and Kafka -> router ->
    /// Kafka recipient, each against its HTTP-mode counterpart, events/s on one core.
    Kafka(bench::KafkaBench),
    /// nginx `return 204` and the weir collector on the same core under the same wrk:
    /// requests/s, events/s and p99 side by side, with the ratio (needs nginx-light, wrk).
    Compare(bench::CompareBench),
}

#[derive(Subcommand)]
pub(crate) enum LoaderCommand {
    /// Load closed hours that are not loaded yet (or grew since).
    Run {
        /// Also load the hours still open.
        #[arg(long)]
        now: bool,
        /// Keep running, loading hours as they close.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Serve the warehouse over Arrow Flight (`loader.flight`, default 127.0.0.1:8815).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List buffered and loaded hours: events and bytes in the buffer, rows in the
    /// warehouse, and the state (open, closed, loaded, stale, expired).
    Hours {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Rebuild buffered hours, replacing what was loaded; hours with no events are
    /// skipped.
    Replay {
        /// First hour, like 2026-11-22T13 (UTC).
        #[arg(long, value_name = "HOUR")]
        from: String,
        /// Last hour, inclusive.
        #[arg(long, value_name = "HOUR")]
        to: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub(crate) enum CatalogCommand {
    /// Write the demo catalog as commented files into DIR (a catalog to start from:
    /// `weir up --catalog DIR`).
    Init {
        /// The directory to create (it must not hold *.toml files yet).
        dir: PathBuf,
    },
    /// Validate a catalog directory; with --previous, also refuse breaking edits.
    Check {
        /// The earlier revision of the catalog (a directory) to compare against.
        #[arg(long, value_name = "OLD")]
        previous: Option<PathBuf>,
        /// The catalog directory.
        dir: PathBuf,
    },
    /// List every difference between two revisions of a catalog (added `+`, removed `-`,
    /// changed `~`), and which of them break the append-only rule (then it exits 2).
    Diff {
        /// The earlier revision (a directory).
        old: PathBuf,
        /// The later revision (a directory).
        new: PathBuf,
    },
    /// Print a markdown changelog: every event, what each version changed, the
    /// environments and fields.
    Changelog {
        /// The catalog directory.
        dir: PathBuf,
    },
    /// Export the catalog for other tools (JSON Schema, the only format).
    Export {
        /// Output format.
        #[arg(long, value_parser = ["jsonschema"], default_value = "jsonschema")]
        format: String,
        /// Write one `<event>.v<version>.schema.json` per event version here instead of
        /// one JSON document (keyed `<event>/v<version>`) on stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The catalog directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a complete, commented config with every default.
    Example,
    /// Validate a config file and its catalog together without starting anything: every
    /// recipient the catalog names must be defined.
    Check {
        /// The catalog directory (default: the config's `catalog`).
        #[arg(long, value_name = "DIR")]
        catalog: Option<PathBuf>,
        /// The config file.
        file: PathBuf,
    },
}
