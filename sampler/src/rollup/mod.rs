//! Rollups: what is not kept becomes compact summaries whose totals stay exact.
//!
//! [`logs`] mines log bodies into templates and counts them per resource, severity and
//! template; [`metrics`] aggregates metric points per interval; [`spans`] turns every span
//! received into span metrics.

mod hash;
pub mod logs;
pub mod metrics;
pub mod spans;
