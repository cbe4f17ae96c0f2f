//! The integration suite, one binary (one link of the whole tree instead of one per
//! file): each module is one area, against real servers started by `scripts/services`.
//! `tests/outage.rs` stays a binary of its own: it stops the machine's RabbitMQ, which
//! the recipient tests here use.

mod common;

mod bad_input;
mod browser;
mod cli;
mod codegen;
mod components;
mod console;
mod deploy;
mod e2e;
mod faults;
mod flight;
mod kafka_mode;
mod loader_crash;
mod mongo_buffer;
mod newcomer;
mod proxy;
mod recipients;
mod warehouse_readers;
