//! `weir`: one binary for every part of the pipeline.

#[cfg(feature = "bench")]
mod bench;
mod cli;
mod commands;
mod config;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
