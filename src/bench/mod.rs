//! `weir bench`: the project's load generators, one file per bench, one harness.

mod collector;
mod compare;
mod fanout;
mod harness;
mod kafka;
mod loader;
mod proxy;
mod router;

pub use collector::{run, CollectorBench};
pub use compare::{run_compare, CompareBench};
pub use fanout::{run_fanout, FanoutBench};
pub use kafka::{run_kafka, KafkaBench};
pub use loader::{run_loader, LoaderBench};
pub use proxy::{run_proxy, ProxyBench};
pub use router::{run_router, RouterBench};

/// Runs one `weir bench` command.
pub fn run_command(command: crate::cli::BenchCommand) -> anyhow::Result<std::process::ExitCode> {
    use crate::cli::BenchCommand as B;
    let _cleanup = harness::clean_up_on_signal();
    match command {
        B::Collector(o) => run(o)?,
        B::Loader(o) => run_loader(o)?,
        B::Router(o) => run_router(o)?,
        B::Fanout(o) => run_fanout(o)?,
        B::Proxy(o) => run_proxy(o)?,
        B::Kafka(o) => run_kafka(o)?,
        B::Compare(o) => run_compare(o)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}
