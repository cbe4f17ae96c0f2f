//! Events as sent (JSON) and as stored (the protobuf [`crate::pb::Event`]), one part
//! each: [`incoming`] (JSON as sent), [`wire`] (protobuf views and batches), [`json`]
//! (the stored JSON form), [`time`] (timestamps and ids).
//!
//! [`Incoming::parse`] reads one sent event without copying: names borrow from the
//! request body and field values stay raw JSON until validation looks at them.
//! [`EventView`] is a stored event by reference: [`EventView::encode`] writes it straight
//! into a spool buffer and [`EventView::decode`] reads it back without copying.

pub mod incoming;
pub mod json;
pub mod scan;
pub mod time;
pub mod wire;

pub use incoming::*;
pub use time::*;
pub use wire::*;
