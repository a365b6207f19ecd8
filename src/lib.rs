//! kefu (客服): a customer-service chat assistant for Taobao/Tmall shops.
//!
//! Map of the crate, one concern per module:
//!
//! - [`normalize`]: text normalisation shared by keywords and messages
//!   (full-width, case, white space, traditional to simplified);
//! - [`yaml`]: the one module that talks to the YAML parser;
//! - [`phrases`]: phrase libraries, templates and their validation;
//! - [`matcher`]: the keyword automaton and the scoring that ranks intents;
//! - [`politeness`]: the checker for agent drafts;
//! - [`eval`]: accuracy on a labelled file;
//! - [`events`]: the event record shared by the store, files and reports;
//! - [`store`]: the durable SQLite event log with its writer thread;
//! - [`report`]: response-time and satisfaction reports from events;
//! - `room`: waiting for room in a bounded queue (an agent's, the log's);
//! - [`config`]: settings from file, environment and flags;
//! - [`protocol`]: the WebSocket JSON messages;
//! - [`clock`]: the 30-second response clock (rounds, nudges, breaches);
//! - [`server`]: the WebSocket service (`kefu serve`);
//! - [`web`]: the browser pages, built into the binary.

pub mod clock;
pub mod config;
pub mod eval;
pub mod events;
pub mod matcher;
pub mod normalize;
pub mod phrases;
pub mod politeness;
pub mod protocol;
pub mod report;
mod room;
pub mod server;
pub mod store;
pub mod web;
pub mod yaml;

#[cfg(test)]
mod tests;
