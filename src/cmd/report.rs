//! `kefu events` and `kefu report`.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EventsArgs {}

#[derive(clap::Args)]
pub struct ReportArgs {}

pub fn events(_args: EventsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kefu events is not built yet")
}

pub fn report(_args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kefu report is not built yet")
}
