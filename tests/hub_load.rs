//! What many buyers can do to the hub: the order of an agent's welcome,
//! now rendered by the agent's connection outside the hub lock.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::spawn_app;
use serde_json::json;

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
