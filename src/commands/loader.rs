//! `weir loader run | serve | hours | replay`.

use std::process::ExitCode;

use anyhow::Context;

use super::{load_catalog, load_config};
use crate::cli::LoaderCommand;
use crate::run;

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

pub(super) fn loader(command: LoaderCommand) -> anyhow::Result<ExitCode> {
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
        LoaderCommand::Hours { json, config } => {
            let cfg = load_config(&config)?;
            let (catalog, _) = load_catalog(&cfg, true)?;
            run::runtime()?.block_on(run::mirror_mongo(&cfg, weir_loader::mongo_mirror::Hours::All))?;
            let hours = run::make_loader(&cfg, catalog)
                .hours()
                .context("cannot list the hours")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hours)?);
            } else if hours.is_empty() {
                println!(
                    "no hours: nothing buffered in {} and nothing loaded in {}",
                    cfg.buffer_dir().display(),
                    cfg.warehouse().display()
                );
            } else {
                print!("{}", hours_table(&hours));
            }
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
            let mut rebuilt = 0;
            for r in &reports? {
                match r {
                    weir_loader::ReplayHour::Rebuilt(r) => {
                        rebuilt += 1;
                        println!(
                            "{}: {} rows, {} invalid{}",
                            r.manifest.hour,
                            r.manifest.rows,
                            r.manifest.invalid_rows,
                            damage_note(&r.manifest)
                        );
                    }
                    weir_loader::ReplayHour::Empty(h) => {
                        println!(
                            "{}: skipped, nothing was received in this hour",
                            weir_proto::hour::display(*h)
                        )
                    }
                }
            }
            if rebuilt == 0 {
                println!(
                    "no hour from {} to {} holds events; `weir loader hours` lists the buffered ones",
                    weir_proto::hour::display(from),
                    weir_proto::hour::display(to)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The table `weir loader hours` prints.
fn hours_table(hours: &[weir_loader::HourListing]) -> String {
    let num = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut out = format!(
        "{:<14} {:<8} {:>12} {:>14} {:>12} {:>10}\n",
        "HOUR (UTC)", "STATE", "BUFFERED", "BUFFER BYTES", "ROWS", "INVALID"
    );
    for h in hours {
        out.push_str(&format!(
            "{:<14} {:<8} {:>12} {:>14} {:>12} {:>10}\n",
            weir_proto::hour::display(h.hour),
            h.state.as_str(),
            num(h.buffered_events),
            num(h.buffer_bytes),
            num(h.rows),
            num(h.invalid_rows)
        ));
    }
    out.push_str(
        "open: taking events, not loaded; closed: waiting for the loader; stale: events came since the load; \
         expired: buffer deleted after retention_days (no replay)\n",
    );
    out
}
