//! What many buyers can do to the hub: a shop's cap on open conversations
//! (`limits.max_open_conversations`) over the wire, and the order of an
//! agent's welcome, now rendered by the agent's connection outside the hub
//! lock.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{close_code, spawn_app, spawn_local, test_config};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// At the cap a new buyer gets `shop_busy` in Chinese and close 1013;
/// a buyer resuming still gets in, another shop is not affected, and once
/// a conversation closes (its buyer stayed away past the resume window) a
/// new buyer gets in.
#[tokio::test(start_paused = true)]
async fn a_shop_at_its_cap_refuses_new_buyers_until_a_conversation_closes() {
    let mut config = test_config();
    config.limits.max_open_conversations = 2;
    config.limits.resume_window = Duration::from_secs(60);
    config.limits.ping_interval = Duration::from_secs(3600);
    let t = spawn_local(config).await;
    let (b1, w1, _) = t.buyer("b1").await;
    let (_b2, _, _) = t.buyer("b2").await;

    let refuse = |buyer: &'static str| {
        let t = &t;
        async move {
            let mut c = t.connect().await;
            c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":buyer}))
                .await;
            let (before, frame) = c.expect_close().await;
            assert_eq!(before.len(), 1, "{before:?}");
            assert_eq!(before[0]["code"], "shop_busy");
            let message = before[0]["message"].as_str().unwrap();
            assert!(
                message.starts_with("亲，测试旗舰店当前咨询人数较多"),
                "{message}"
            );
            assert_eq!(close_code(&frame), Some(CloseCode::Again), "1013");
            assert_eq!(frame.unwrap().reason.as_str(), "shop_busy");
        }
    };
    refuse("b3").await;
    assert_eq!(t.app.stats().refused_shop_busy, 1);
    assert_eq!(t.app.stats().conversations, 2);

    // b1 comes back with its secret: a resume, not a new conversation.
    b1.close().await;
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":w1["resume"]}))
        .await;
    let w = c.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["conversation"], w1["conversation"]);

    // The cap is per shop.
    let (_other, w, _) = t.buyer_of("s2", "b9").await;
    assert_eq!(w["resumed"], false);

    // b1 leaves for good: after the resume window its conversation closes
    // and a new buyer takes the place.
    c.close().await;
    refuse("b4").await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(t.app.stats().conversations, 2, "b2 and s2's b9");
    let (_b5, w, _) = t.buyer("b5").await;
    assert_eq!(w["resumed"], false);
    assert_eq!(t.app.stats().refused_shop_busy, 2);
    t.stop().await;
}

/// The welcome is built after the hub lock is released, by the agent's
/// own connection; it still comes before anything queued for the agent
/// after it: buyers who keep writing while the agent signs in have each
/// message either in the welcome's history or in a `buyer_message` after
/// it, never both, never lost.
#[tokio::test]
async fn the_welcome_comes_before_what_buyers_send_meanwhile() {
    const BUYERS: usize = 30;
    const MESSAGES: usize = 5;
    let t = spawn_app().await;
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        let (mut b, w, _) = t.buyer(&format!("b{i}")).await;
        // A long first message: a welcome worth rendering.
        b.send(json!({"type":"message","text":format!("这款有货吗{}", "啊".repeat(1900))}))
            .await;
        b.recv_type("reply").await; // nobody online: the offline reply
        buyers.push((b, w["conversation"].as_str().unwrap().to_string()));
    }
    let writers: Vec<_> = buyers
        .into_iter()
        .map(|(mut b, conv)| {
            tokio::spawn(async move {
                for k in 0..MESSAGES {
                    b.send(json!({"type":"message","text":format!("m{k}")}))
                        .await;
                    tokio::task::yield_now().await;
                }
                (b, conv)
            })
        })
        .collect();
    let mut agent = t.connect().await;
    agent
        .send(json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"t1"}))
        .await;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let welcome = agent.recv().await;
    assert_eq!(welcome["type"], "welcome", "the first frame: {welcome}");
    let mine: HashSet<String> = welcome["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["conversation"].as_str().unwrap().to_string();
            for line in c["history"].as_array().unwrap() {
                let text = line["text"].as_str().unwrap();
                if line["from"] == "buyer" && text.starts_with('m') {
                    seen.entry(id.clone()).or_default().push(text.into());
                }
            }
            id
        })
        .collect();
    assert_eq!(mine.len(), BUYERS);
    let mut convs = Vec::new();
    for w in writers {
        convs.push(w.await.unwrap());
    }
    let pending: usize = BUYERS * MESSAGES - seen.values().map(Vec::len).sum::<usize>();
    for _ in 0..pending {
        let m = agent.recv_type("buyer_message").await;
        let conv = m["conversation"].as_str().unwrap();
        assert!(
            mine.contains(conv),
            "a message for a conversation not in the welcome"
        );
        seen.entry(conv.into())
            .or_default()
            .push(m["text"].as_str().unwrap().into());
    }
    let want: Vec<String> = (0..MESSAGES).map(|k| format!("m{k}")).collect();
    for (_, conv) in &convs {
        assert_eq!(
            seen.get(conv),
            Some(&want),
            "{conv}: each message once, in order"
        );
    }
    agent.expect_silence(Duration::from_millis(200)).await;
    t.stop().await;
}
