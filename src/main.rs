//! `weir`: one binary for every part of the pipeline.

mod bench;
mod config;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_proto::Catalog;

use crate::config::Config;

/// weir — a self-hosted clickstream pipeline: collector, router, loader and event catalog.
#[derive(Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Debug)]
struct ConfigArg {
    /// The config file (TOML); `weir config example` prints one.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Collector, router and loader in one process, on embedded defaults.
    Up {
        /// Data directory (spool, log, buffers, warehouse). Default: ./weir-data.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Catalog directory. Default: the built-in demo catalog.
        #[arg(long, value_name = "DIR")]
        catalog: Option<PathBuf>,
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
    /// Check the event catalog.
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
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
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
}

#[derive(Subcommand)]
enum LoaderCommand {
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
    /// Rebuild buffered hours, replacing what was loaded.
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
enum CatalogCommand {
    /// Validate a catalog directory; with --previous, also refuse breaking edits.
    Check {
        /// The earlier revision of the catalog (a directory) to compare against.
        #[arg(long, value_name = "OLD")]
        previous: Option<PathBuf>,
        /// The catalog directory.
        dir: PathBuf,
    },
    /// List every difference between two revisions of a catalog (added `+`, removed `-`,
    /// changed `~`), and which of them break the append-only rule.
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
    /// Export the catalog for other tools.
    Export {
        /// Output format.
        #[arg(long, value_parser = ["jsonschema"])]
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
enum ConfigCommand {
    /// Print a complete, commented config with every default.
    Example,
    /// Validate a config file (and its catalog) without starting anything.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(arg.config.as_deref(), std::env::vars())?)
}

/// `weir collector`, and `weir proxy` (the same with the public proxy listener).
fn collector_command(config: ConfigArg, with_proxy: bool) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&config)?;
    // A directory is read once; otherwise the catalog is pulled from the routers
    // (or the URL `catalog` names) and kept current.
    let source = match &cfg.catalog {
        Some(dir) if !config::is_url(dir) => run::CatalogSource::Local(load_catalog(&cfg, false)?.0),
        Some(url) => run::CatalogSource::Remote(vec![url.clone()]),
        None => run::CatalogSource::Remote(cfg.collector.routers.clone()),
    };
    run::runtime()?.block_on(run::collector(cfg, source, with_proxy))?;
    Ok(ExitCode::SUCCESS)
}

/// Loads the catalog directory a config names, or the demo one when `demo_ok`.
fn load_catalog(cfg: &Config, demo_ok: bool) -> anyhow::Result<(Catalog, run::CatalogOrigin)> {
    match &cfg.catalog {
        Some(url) if config::is_url(url) => anyhow::bail!(
            "catalog = {url:?} is a URL: only `weir collector` pulls its catalog from a router; point `catalog` at a directory"
        ),
        Some(dir) => {
            let c = Catalog::load_dir(Path::new(dir)).map_err(|e| anyhow::anyhow!("invalid catalog:\n{e}"))?;
            Ok((c, run::CatalogOrigin::Dir(dir.clone())))
        }
        None if demo_ok => Ok((Catalog::demo(), run::CatalogOrigin::BuiltInDemo)),
        None => anyhow::bail!("no catalog: set `catalog = \"DIR\"` in the config (or WEIR_CATALOG)"),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up {
            data_dir,
            catalog,
            config,
        } => {
            let mut cfg = load_config(&config)?;
            if let Some(d) = data_dir {
                cfg.data_dir = Some(d);
            }
            if let Some(c) = catalog {
                cfg.catalog = Some(c.to_string_lossy().into_owned());
            }
            let (catalog, source) = load_catalog(&cfg, true)?;
            run::runtime()?.block_on(run::up(cfg, catalog, source))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Collector { config } => collector_command(config, false),
        Command::Proxy { config } => collector_command(config, true),
        Command::Router { config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, false)?;
            run::runtime()?.block_on(run::router(cfg, catalog))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Loader { command: None, config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, true)?;
            run::runtime()?.block_on(run::loader_component(cfg, catalog))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Loader {
            command: Some(command), ..
        } => loader(command),
        Command::Bench {
            command: BenchCommand::Collector(opts),
        } => {
            bench::run(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Loader(opts),
        } => {
            bench::run_loader(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Router(opts),
        } => {
            bench::run_router(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Fanout(opts),
        } => {
            bench::run_fanout(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Proxy(opts),
        } => {
            bench::run_proxy(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Check { previous, dir },
        } => catalog_check(previous.as_deref(), &dir),
        Command::Codegen {
            lang,
            env,
            catalog,
            out,
        } => {
            let catalog = load_catalog_dir(&catalog)?;
            let model = weir_proto::codegen::Model::new(&catalog, &env)?;
            let (package, files) = weir_proto::codegen::generate(lang, &model);
            weir_proto::codegen::write_files(&out, &files)?;
            println!(
                "{} {} ({} event versions, {} files) written to {}",
                package,
                model.version,
                model.events.len(),
                files.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Diff { old, new },
        } => catalog_diff(&old, &new),
        Command::Catalog {
            command: CatalogCommand::Changelog { dir },
        } => {
            print!("{}", weir_proto::catalog::docs::changelog(&load_catalog_dir(&dir)?));
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Export { format: _, out, dir },
        } => catalog_export(&dir, out.as_deref()),
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let cfg = Config::load(Some(&file), std::env::vars())?;
            // What starting would check beyond the file: proxy keys, CIDRs, GeoIP file.
            weir_collector::proxy::Proxy::new(&cfg.proxy).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let catalog = match cfg.catalog.as_deref() {
                Some(url) if config::is_url(url) => format!("pulled from {url} at run time"),
                _ => {
                    let (catalog, source) = load_catalog(&cfg, true)?;
                    format!(
                        "{source}: {} events, revision {}",
                        catalog.events.len(),
                        catalog.revision
                    )
                }
            };
            println!("{}: ok (catalog {catalog})", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// ", N damaged bytes skipped" when the hour's buffer held damage (see the log).
fn damage_note(m: &weir_loader::Manifest) -> String {
    if m.damaged_bytes == 0 && m.unreadable_records == 0 {
        return String::new();
    }
    format!(
        ", DAMAGE: {} damaged bytes and {} unreadable records skipped (see the log)",
        m.damaged_bytes, m.unreadable_records
    )
}

fn loader(command: LoaderCommand) -> anyhow::Result<ExitCode> {
    match command {
        LoaderCommand::Run { now, watch, config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, true)?;
            run::init_tracing();
            let loader = run::make_loader(&cfg, catalog);
            let which = if now {
                weir_loader::mongo_mirror::Hours::All
            } else {
                weir_loader::mongo_mirror::Hours::Closed
            };
            let rt = run::runtime()?;
            loop {
                rt.block_on(run::mirror_mongo(&cfg, which))?;
                let reports = loader.run(now).context("load failed")?;
                for r in &reports {
                    let m = &r.manifest;
                    println!(
                        "{}: {} rows, {} invalid, {} duplicates dropped, {} files{}",
                        m.hour,
                        m.rows,
                        m.invalid_rows,
                        m.duplicates,
                        m.files.len(),
                        damage_note(m)
                    );
                }
                if !watch {
                    if reports.is_empty() {
                        println!("nothing to load in {}", cfg.buffer_dir().display());
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(std::time::Duration::from_secs(cfg.loader.interval_secs.max(1)));
            }
        }
        LoaderCommand::Serve { config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, true)?;
            run::runtime()?.block_on(run::flight(cfg, catalog))?;
            Ok(ExitCode::SUCCESS)
        }
        LoaderCommand::Replay { from, to, config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, true)?;
            run::init_tracing();
            let from = weir_proto::hour::parse(&from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
            let to = weir_proto::hour::parse(&to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            anyhow::ensure!(from <= to, "--from must not be after --to");
            run::runtime()?.block_on(run::mirror_mongo(
                &cfg,
                weir_loader::mongo_mirror::Hours::Range(from, to),
            ))?;
            let loader = run::make_loader(&cfg, catalog);
            let bar = indicatif::ProgressBar::new((to - from + 1) as u64).with_style(
                indicatif::ProgressStyle::with_template("replay {bar:40} {pos}/{len} hours, {elapsed} (eta {eta})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let reports = loader.replay(from, to, |done, _| bar.set_position(done as u64));
            bar.finish_and_clear();
            let reports = reports?;
            for r in &reports {
                println!(
                    "{}: {} rows, {} invalid{}",
                    r.manifest.hour,
                    r.manifest.rows,
                    r.manifest.invalid_rows,
                    damage_note(&r.manifest)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a catalog directory for a command that only reads it; an invalid one is an
/// error listing every problem.
fn load_catalog_dir(dir: &Path) -> anyhow::Result<Catalog> {
    Catalog::load_dir(dir).map_err(|e| anyhow::anyhow!("{}: invalid catalog:\n{e}", dir.display()))
}

fn catalog_diff(old_dir: &Path, new_dir: &Path) -> anyhow::Result<ExitCode> {
    let old = load_catalog_dir(old_dir)?;
    let new = load_catalog_dir(new_dir)?;
    let changes = weir_proto::catalog::docs::diff(&old, &new);
    for c in &changes {
        println!("{c}");
    }
    let breaking = weir_proto::catalog::check::compatible(&old, &new);
    if changes.is_empty() {
        println!("no changes");
    } else if breaking.is_empty() {
        println!("{} change(s), none breaking", changes.len());
    } else {
        println!(
            "{} change(s); {} break the append-only rule:",
            changes.len(),
            breaking.len()
        );
        for p in &breaking {
            println!("  {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn catalog_export(dir: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let schemas = weir_proto::catalog::docs::json_schemas(&load_catalog_dir(dir)?);
    match out {
        None => println!("{}", serde_json::to_string_pretty(&schemas)?),
        Some(out) => {
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
            for (key, schema) in &schemas {
                let path = out.join(format!("{}.schema.json", key.replace('/', ".")));
                let mut text = serde_json::to_string_pretty(schema)?;
                text.push('\n');
                std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!("{} schema(s) written to {}", schemas.len(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn catalog_check(previous: Option<&Path>, dir: &Path) -> anyhow::Result<ExitCode> {
    let new = match Catalog::load_dir(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("catalog check failed: {} problem(s)", e.problems.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(old_dir) = previous {
        let old = Catalog::load_dir(old_dir)
            .map_err(|e| anyhow::anyhow!("--previous {}: invalid catalog:\n{e}", old_dir.display()))?;
        let problems = weir_proto::catalog::check::compatible(&old, &new);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "catalog check failed: {} breaking edit(s) against {}",
                problems.len(),
                old_dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let versions: usize = new.events.values().map(|e| e.versions.len()).sum();
    println!(
        "{}: ok ({} environments, {} fields, {} events, {} versions)",
        dir.display(),
        new.environments.len(),
        new.fields.len(),
        new.events.len(),
        versions
    );
    Ok(ExitCode::SUCCESS)
}
