//! The step machine: validates requests, runs one step per message, classifies
//! the outcome and decides what follows (next step, delayed retry or poll,
//! final event). Knows nothing of lapin or HTTP: it talks to the broker through
//! the [`Transport`] trait and to providers through [`step::Provider`].

pub mod step;
pub mod local;
