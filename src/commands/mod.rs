//! What each command does; `dispatch` maps the parsed command line onto them.

mod catalog;
mod loader;

use std::path::Path;
use std::process::ExitCode;

use weir_proto::Catalog;

#[cfg(feature = "bench")]
use crate::bench;
use crate::cli::*;
use crate::config::{self, Config};
use crate::run;
use catalog::{catalog_check, catalog_diff, catalog_export, load_catalog_dir};

pub(crate) fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    let mut cfg = Config::load(arg.config.as_deref(), std::env::vars())?;
    if let Some(c) = &arg.catalog {
        cfg.catalog = Some(c.to_string_lossy().into_owned());
    }
    Ok(cfg)
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
pub(crate) fn load_catalog(cfg: &Config, demo_ok: bool) -> anyhow::Result<(Catalog, run::CatalogOrigin)> {
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

pub(crate) fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up { data_dir, config } => {
            let mut cfg = load_config(&config)?;
            if let Some(d) = data_dir {
                cfg.data_dir = Some(d);
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
        } => loader::loader(command),
        #[cfg(feature = "bench")]
        Command::Bench { command } => bench::run_command(command),
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
            // The package version must be numeric for pip, npm and composer; its last part
            // is the revision as a number, and the revision itself is shown as everywhere.
            println!(
                "{} {} (catalog revision {}; {} event versions, {} files) written to {}",
                package,
                model.version,
                model.revision,
                model.events.len(),
                files.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Init { dir },
        } => catalog_init(&dir),
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
            command: ConfigCommand::Check { file, catalog },
        } => {
            let mut cfg = Config::load(Some(&file), std::env::vars())?;
            if let Some(c) = catalog {
                cfg.catalog = Some(c.to_string_lossy().into_owned());
            }
            // Listen addresses: a typo is caught here, not at start.
            for (key, addr) in [
                ("collector.listen", &cfg.collector.listen),
                ("router.listen", &cfg.router.listen),
                ("proxy.listen", &cfg.proxy.listen),
                ("loader.flight", &cfg.loader.flight),
                ("loader.listen", &cfg.loader.listen),
            ] {
                weir_proto::runtime::http::check_listen(addr)
                    .map_err(|e| anyhow::anyhow!("{}: {key} = {e}", file.display()))?;
            }
            // What starting would check beyond the file: proxy keys, CIDRs, GeoIP file.
            weir_collector::proxy::Proxy::new(&cfg.proxy).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let catalog = match cfg.catalog.as_deref() {
                Some(url) if config::is_url(url) => format!("pulled from {url} at run time"),
                _ => {
                    let (catalog, source) = load_catalog(&cfg, true)?;
                    weir_router::recipients_check(&cfg.router)(&catalog).map_err(|e| {
                        anyhow::anyhow!("{}: the catalog does not fit the config:\n{e}", file.display())
                    })?;
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

/// `weir catalog init DIR`: the demo catalog as files, refusing to overwrite a catalog.
fn catalog_init(dir: &Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let existing: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        if !existing.is_empty() {
            anyhow::bail!(
                "{} already holds a catalog ({}); choose an empty directory",
                dir.display(),
                existing.join(", ")
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in weir_proto::catalog::DEMO_FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let catalog = load_catalog_dir(dir)?;
    println!(
        "{}: the demo catalog ({} events, {} environments) in {} files; edit them, check with `weir catalog check {}`, run with `weir up --catalog {}`",
        dir.display(),
        catalog.events.len(),
        catalog.environments.len(),
        weir_proto::catalog::DEMO_FILES.len(),
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
