//! The one task that drives the clock.
//!
//! It sleeps until the hub's earliest deadline (a nudge, breach or holding
//! alarm, or a conversation's expiry), fires what is due, and sleeps again.
//! A new deadline earlier than its sleep wakes it through a `Notify`, whose
//! stored permit means a wake-up sent while it is busy is not lost.

use std::time::Duration;

use tokio::time::Instant;

use super::hub::Effects;
use super::App;

/// Sleep when nothing is scheduled (a wake-up arrives with the next round).
const IDLE: Duration = Duration::from_secs(3600);

pub(crate) async fn run(app: App) {
    let mut shutdown = app.shutdown_rx();
    loop {
        let now = Instant::now();
        let phrases = app.phrases();
        let ctx = app.ctx(&phrases);
        let mut fx = Effects::default();
        let next = app.hub().tick(&ctx, now, &mut fx);
        fx.wake_timer = false;
        app.apply(fx);
        let wake = next.unwrap_or(now + IDLE);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = app.shared.timer.notified() => {}
            _ = super::stopping(&mut shutdown) => break,
        }
    }
}
