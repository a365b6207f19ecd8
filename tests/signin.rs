//! Failed agent sign-ins are throttled per account (shop, agent id):
//! past `limits.signin_failures` wrong tokens a hello for that account is
//! refused with `too_many_attempts` without the token being checked, while
//! other agents and agents already signed in carry on. Real sockets on
//! 127.0.0.1:0; the default budget (10 per 60 s) unless a test says.

mod common;

use std::time::Duration;

use common::{close_code, spawn_app, spawn_app_with, test_config, Client, TestApp};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// An agent hello of shop `shop`; what came back before the close (or the
/// welcome, with the client still open).
async fn hello(t: &TestApp, shop: &str, agent: &str, token: &str) -> (Value, Option<Client>) {
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"agent","shop":shop,"agent":agent,"token":token}))
        .await;
    let first = c.recv().await;
    if first["type"] == "welcome" {
        return (first, Some(c));
    }
    let (rest, frame) = c.expect_close().await;
    assert!(rest.is_empty(), "{first} then {rest:?}");
    assert_eq!(close_code(&frame), Some(CloseCode::Policy), "{first}");
    (first, None)
}

/// `n` wrong guesses at `shop:agent`'s token, each refused as `bad_token`.
async fn guess(t: &TestApp, shop: &str, agent: &str, n: usize) {
    for i in 0..n {
        let (v, _) = hello(t, shop, agent, &format!("guess{i}")).await;
        assert_eq!(v["code"], "bad_token", "guess {i} at {shop}:{agent}: {v}");
    }
}

/// A `too_many_attempts` refusal with its wait in 1..=`most` seconds.
fn assert_locked(v: &Value, most: u64) -> u64 {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "too_many_attempts", "{v}");
    let wait = v["retry_after"].as_u64().unwrap_or(0);
    assert!((1..=most).contains(&wait), "retry_after: {v}");
    let message = v["message"].as_str().unwrap();
    // Staff are addressed as staff (no 亲), with the wait.
    assert!(
        !message.contains("亲") && message.contains(&format!("请 {wait} 秒后再试")),
        "{v}"
    );
    wait
}

/// The 11th guess is refused even with the right token, and so is the
/// 11th at a made-up agent id: from outside, the two look the same.
#[tokio::test]
async fn the_eleventh_sign_in_is_refused_even_with_the_right_token() {
    let t = spawn_app().await;
    guess(&t, "s1", "a1", 10).await;
    let (v, c) = hello(&t, "s1", "a1", "t1").await;
    assert!(c.is_none(), "signed in during a lockout: {v}");
    assert_locked(&v, 6);
    // Refused attempts do not sign in later either, and stay refused.
    let (v, _) = hello(&t, "s1", "a1", "t1").await;
    assert_locked(&v, 6);

    for (shop, agent) in [("s1", "nobody"), ("nowhere", "a1")] {
        guess(&t, shop, agent, 10).await;
        let (v, _) = hello(&t, shop, agent, "t1").await;
        assert_locked(&v, 6);
    }
    t.stop().await;
}

/// One agent's lockout leaves the shop's other agents (and the same id in
/// another shop) alone.
#[tokio::test]
async fn another_agent_of_the_shop_is_unaffected() {
    let t = spawn_app().await;
    guess(&t, "s1", "a1", 10).await;
    assert_locked(&hello(&t, "s1", "a1", "t1").await.0, 6);
    let (v, c) = hello(&t, "s1", "a2", "t2").await;
    assert_eq!(v["type"], "welcome", "{v}");
    // A wrong guess at a2 is still just a wrong token.
    let (v, _) = hello(&t, "s1", "a2", "nope").await;
    assert_eq!(v["code"], "bad_token", "{v}");
    let (v, c2) = hello(&t, "s2", "b1", "u1").await;
    assert_eq!(v["type"], "welcome", "{v}");
    c.unwrap().close().await;
    c2.unwrap().close().await;
    t.stop().await;
}

/// An agent signed in before the guessing keeps their connection and
/// their buyers while their account is locked.
#[tokio::test]
async fn an_agent_already_signed_in_stays_connected() {
    let t = spawn_app().await;
    let (mut agent, _) = t.agent("a1").await;
    guess(&t, "s1", "a1", 10).await;
    assert_locked(&hello(&t, "s1", "a1", "t1").await.0, 6);

    let (mut buyer, welcome, _) = t.buyer("b1").await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    buyer
        .send(json!({"type":"message","text":"请问什么时候发货"}))
        .await;
    let m = agent.recv_until("buyer_message").await;
    assert_eq!(m["conversation"], conv.as_str());
    agent
        .send(json!({"type":"reply","conversation":conv,"text":"亲，48小时内为您发出哦"}))
        .await;
    agent.recv_until("reply_sent").await;
    assert_eq!(
        buyer.recv_until("reply").await["text"],
        "亲，48小时内为您发出哦"
    );
    agent.close().await;
    buyer.close().await;
    t.stop().await;
}

/// Once the wait the refusal named has passed, the right token signs in
/// (a budget of 2 per 4 s: one attempt back every 2 s).
#[tokio::test]
async fn after_the_wait_the_right_token_signs_in() {
    let mut config = test_config();
    config.limits.signin_failures = 2;
    config.limits.signin_window = Duration::from_secs(4);
    let t = spawn_app_with(config).await;
    guess(&t, "s1", "a1", 2).await;
    let wait = assert_locked(&hello(&t, "s1", "a1", "t1").await.0, 2);
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let (v, c) = hello(&t, "s1", "a1", "t1").await;
    assert_eq!(v["type"], "welcome", "{v}");
    c.unwrap().close().await;
    t.stop().await;
}

/// A settings reload (SIGHUP) takes the staff of the file: a new agent
/// signs in, a changed token replaces the old one and signs its holder
/// out, a removed agent is signed out and cannot sign in again; agents
/// not touched keep their sessions. A shop removed loses its agents and
/// refuses new buyers (as after a restart); put back, it serves again.
#[tokio::test]
async fn a_settings_reload_adds_changes_and_removes_agents() {
    let t = spawn_app().await;
    let (_, a1) = hello(&t, "s1", "a1", "t1").await;
    let (_, a2) = hello(&t, "s1", "a2", "t2").await;
    let (_, a3) = hello(&t, "s1", "a3", "t3").await;
    let (mut a1, mut a2, mut a3) = (a1.unwrap(), a2.unwrap(), a3.unwrap());

    let mut config = test_config();
    let s1 = config.shops.get_mut("s1").unwrap();
    s1.agents.get_mut("a1").unwrap().token = "t1-new".into();
    s1.agents.remove("a2");
    s1.agents.insert(
        "a4".into(),
        kefu::config::AgentConfig {
            token: "t4".into(),
            name: Some("小新".into()),
        },
    );
    config.shops.remove("s2");
    let changes = t.app.reload_staff(&config);
    assert_eq!(changes.added, ["s1:a4"]);
    assert_eq!(changes.changed, ["s1:a1"]);
    assert_eq!(changes.removed, ["s1:a2", "s2:b1"]);
    assert_eq!(changes.shops_removed, ["s2"]);
    assert!(changes.shops_added.is_empty());

    // Signed out, told why, 1008.
    for c in [&mut a1, &mut a2] {
        let (frames, close) = c.expect_close().await;
        assert_eq!(frames.last().unwrap()["code"], "bad_token", "{frames:?}");
        assert_eq!(close_code(&close), Some(CloseCode::Policy));
    }
    assert_eq!(hello(&t, "s1", "a1", "t1").await.0["code"], "bad_token");
    assert_eq!(hello(&t, "s1", "a1", "t1-new").await.0["type"], "welcome");
    assert_eq!(hello(&t, "s1", "a2", "t2").await.0["code"], "bad_token");
    let (w, _a4) = hello(&t, "s1", "a4", "t4").await;
    assert_eq!(w["type"], "welcome", "{w}");
    // a3 was not touched: still signed in (a draft check is answered).
    a3.send(json!({"type":"lint","text":"亲，马上为您查询"}))
        .await;
    a3.recv_until("lint_result").await;
    // The shop removed from the file: its agents' tokens no longer sign
    // in (found by review: they did until a restart), new buyers are
    // refused as a restart would refuse them.
    assert_eq!(hello(&t, "s2", "b1", "u1").await.0["code"], "bad_token");
    let mut buyer = t.connect().await;
    buyer
        .send(json!({"type":"hello","role":"buyer","shop":"s2","buyer":"x1"}))
        .await;
    buyer.expect_error("unknown_shop").await;

    // A second reload of the same file changes nothing; putting a2 and
    // the shop back lets them in again.
    let again = t.app.reload_staff(&config);
    assert!(
        again.added.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );
    assert!(again.shops_removed.is_empty(), "{again:?}");
    let back = test_config();
    let changes = t.app.reload_staff(&back);
    assert_eq!(changes.added, ["s1:a2", "s2:b1"]);
    assert_eq!(changes.shops_back, ["s2"]);
    assert_eq!(hello(&t, "s1", "a2", "t2").await.0["type"], "welcome");
    assert_eq!(hello(&t, "s2", "b1", "u1").await.0["type"], "welcome");
    let (_b, welcome, _) = t.buyer_of("s2", "x2").await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
}

/// A removed agent leaves the colleagues' transfer lists: the pages
/// online are told (`removed: true`, and no `online: false` after it that
/// would put them back), and a welcome no longer lists them (found by
/// review: removed agents stayed listed as offline until a restart).
#[tokio::test]
async fn a_removed_agent_leaves_the_colleague_lists() {
    let mut config = test_config();
    let t = spawn_app_with(config.clone()).await;
    let (_, a1) = hello(&t, "s1", "a1", "t1").await;
    let mut a1 = a1.unwrap();
    a1.keep_colleague_frames();
    let (_, a2) = hello(&t, "s1", "a2", "t2").await;
    let mut a2 = a2.unwrap();
    assert_eq!(a1.recv_type("colleague").await["online"], true);

    config.shops.get_mut("s1").unwrap().agents.remove("a2");
    t.app.reload_staff(&config);
    let told = a1.recv_type("colleague").await;
    assert_eq!(
        told,
        json!({"type":"colleague","agent":"a2","name":null,"online":false,"removed":true})
    );
    a2.expect_close().await;
    a1.expect_silence(Duration::from_millis(300)).await;

    let (w, _a3) = hello(&t, "s1", "a3", "t3").await;
    let listed: Vec<&str> = w["colleagues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["agent"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a1"], "{w}");
}

/// An agent away within the grace (a page refresh) and then removed is
/// not coming back either: their conversations move at once, and not to
/// a colleague the same reload removes (a2, who would get it first: the
/// smallest id of equal load).
#[tokio::test]
async fn a_removed_agent_away_within_the_grace_hands_over_at_once() {
    let (mut config, t, a1, _buyer, welcome) = a1_holds_b1().await;
    let (_, a2) = hello(&t, "s1", "a2", "t2").await;
    let (_, a3) = hello(&t, "s1", "a3", "t3").await;
    let (mut a2, mut a3) = (a2.unwrap(), a3.unwrap());
    a1.close().await;
    // Away within the grace: the conversation is still a1's.
    a3.expect_silence(Duration::from_millis(300)).await;

    let s1 = config.shops.get_mut("s1").unwrap();
    s1.agents.remove("a1");
    s1.agents.remove("a2");
    assert_eq!(t.app.reload_staff(&config).removed, ["s1:a1", "s1:a2"]);
    let moved = moved_before_the_grace(&mut a3).await;
    assert_eq!(moved["conversation"], welcome["conversation"]);
    let (before_close, _) = a2.expect_close().await;
    assert!(
        before_close
            .iter()
            .all(|f| f["type"] != "conversation_assigned"),
        "{before_close:?}"
    );
}

/// A removed agent is not coming back: their conversations move at once
/// to a colleague, not after the grace a page refresh gets (found by
/// review: they waited out the grace).
#[tokio::test]
async fn a_removed_agents_conversations_move_at_once() {
    let (mut config, t, _a1, _buyer, welcome) = a1_holds_b1().await;
    let (_, a2) = hello(&t, "s1", "a2", "t2").await;
    let mut a2 = a2.unwrap();

    config.shops.get_mut("s1").unwrap().agents.remove("a1");
    assert_eq!(t.app.reload_staff(&config).removed, ["s1:a1"]);
    let moved = moved_before_the_grace(&mut a2).await;
    assert_eq!(moved["conversation"], welcome["conversation"]);
}

/// A service with a 30 s grace for agents who leave, a1 signed in and
/// holding buyer b1's conversation: (settings, service, a1, b1, b1's
/// welcome).
async fn a1_holds_b1() -> (kefu::config::Config, TestApp, Client, Client, Value) {
    let mut config = test_config();
    config.limits.agent_grace = Duration::from_secs(30);
    let t = spawn_app_with(config.clone()).await;
    let (_, a1) = hello(&t, "s1", "a1", "t1").await;
    let mut a1 = a1.unwrap();
    let (buyer, welcome, _) = t.buyer("b1").await;
    let assigned = a1.recv_until("conversation_assigned").await;
    assert_eq!(assigned["conversation"], welcome["conversation"]);
    (config, t, a1, buyer, welcome)
}

/// The next `conversation_assigned` of `agent`, well before the 30 s grace.
async fn moved_before_the_grace(agent: &mut Client) -> Value {
    tokio::time::timeout(
        Duration::from_secs(5),
        agent.recv_until("conversation_assigned"),
    )
    .await
    .expect("moved before the 30 s grace")
}
