//! The web dashboard (temporary stub until the framework lands).

pub mod chart;
