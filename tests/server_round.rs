//! Suggestions for what the buyer asked across several lines: the open
//! round's buyer lines (since the last agent reply) are matched together,
//! in `buyer_message` and in the conversations of a `welcome` or a move.
//! With the shipped libraries (the fixture ones have no closing intent);
//! invented messages.

mod common;

use std::path::Path;

use common::{spawn_app_with, test_config, Client, TestApp};
use kefu::events::Kind;
use serde_json::{json, Value};

async fn app() -> TestApp {
    let mut config = test_config();
    config.phrases = Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases");
    spawn_app_with(config).await
}

fn intents(m: &Value) -> Vec<String> {
    m["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["intent"].as_str().unwrap().to_string())
        .collect()
}

/// Sends `lines` one by one; the agent's `buyer_message` for the last.
async fn ask(buyer: &mut Client, agent: &mut Client, lines: &[&str]) -> Value {
    let mut last = Value::Null;
    for text in lines {
        buyer.send(json!({"type":"message","text":text})).await;
        last = agent.recv_type("buyer_message").await;
        assert_eq!(last["text"], *text);
    }
    last
}

#[tokio::test]
async fn a_question_split_over_lines_gets_its_suggestion() {
    let mut t = app().await;
    let (mut agent, _) = t.agent("a1").await;
    let (mut buyer, _, _) = t.buyer("b1").await;
    agent.recv_type("conversation_assigned").await;

    // A question, then the address: the address alone matches nothing.
    let m = ask(
        &mut buyer,
        &mut agent,
        &["请问什么时候能送到", "上海市浦东新区"],
    )
    .await;
    assert_eq!(intents(&m)[0], "in_sale.logistics", "{m}");

    // The event keeps the line's own text and records the suggestion shown.
    let events = t.take_events();
    let buyer_events: Vec<_> = events.iter().filter(|e| e.kind == Kind::Buyer).collect();
    assert_eq!(buyer_events.len(), 2);
    let e = buyer_events[1];
    assert_eq!(e.text.as_deref(), Some("上海市浦东新区"));
    assert_eq!(e.intent.as_deref(), Some("in_sale.logistics"));
    assert_eq!(e.stage.as_deref(), Some("in_sale"));
    t.stop().await;
}

#[tokio::test]
async fn thanks_or_a_nudge_after_a_question_still_ranks_the_question() {
    let t = app().await;
    let (mut agent, _) = t.agent("a1").await;
    let cases: &[(&str, &[&str], &str)] = &[
        // A question, then thanks: the question first, not the goodbye.
        ("b1", &["几号能发货呀", "谢谢"], "in_sale.shipping_time"),
        // A question, then `？？？`, which alone matches nothing.
        ("b2", &["我拍错颜色了", "？？？"], "in_sale.order_change"),
        // A greeting, a question, a nudge: the question, not the greeting.
        (
            "b3",
            &["你好", "请问今天能发货吗", "？"],
            "in_sale.shipping_time",
        ),
        // A question, then the order number.
        (
            "b4",
            &["收到的杯子裂了", "订单号 2024112400123"],
            "after_sale.quality_issue",
        ),
    ];
    // Kept connected: a buyer leaving sends the agent a `presence`.
    let mut buyers = Vec::new();
    for (id, lines, want) in cases {
        let (mut buyer, _, _) = t.buyer(id).await;
        agent.recv_type("conversation_assigned").await;
        let m = ask(&mut buyer, &mut agent, lines).await;
        assert_eq!(intents(&m)[0], *want, "{lines:?}: {m}");
        buyers.push(buyer);
    }
    t.stop().await;
}

#[tokio::test]
async fn a_new_question_leads_and_an_answered_one_is_not_joined() {
    let t = app().await;
    let (mut agent, _) = t.agent("a1").await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].clone();
    agent.recv_type("conversation_assigned").await;

    // A second question in the same round leads; the first, unanswered,
    // stays among the suggestions.
    let m = ask(&mut buyer, &mut agent, &["这件有货吗", "能开发票吗"]).await;
    assert_eq!(
        intents(&m)[..2],
        ["in_sale.invoice", "pre_sale.stock"],
        "{m}"
    );

    // The agent answers: the next round starts afresh.
    agent
        .send(json!({"type":"reply","conversation":conv,"text":"亲，有货的，发票可以开哦"}))
        .await;
    agent.recv_type("reply_sent").await;
    let m = ask(&mut buyer, &mut agent, &["？？？"]).await;
    assert_eq!(m["suggestions"], json!([]), "{m}");
    let m = ask(&mut buyer, &mut agent, &["谢谢"]).await;
    assert_eq!(intents(&m)[0], "pre_sale.closing", "{m}");
    t.stop().await;
}

#[tokio::test]
async fn the_welcome_and_a_move_suggest_for_the_whole_round() {
    let mut t = app().await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].clone();
    // Nobody online: the buyer's lines wait for the first agent.
    for text in ["请问什么时候能送到", "上海市浦东新区"] {
        buyer.send(json!({"type":"message","text":text})).await;
    }
    // Both taken by the hub before the agent signs in.
    let mut seen = 0;
    while seen < 2 {
        let e = tokio::time::timeout(common::WAIT, t.events.recv())
            .await
            .expect("event")
            .unwrap();
        seen += usize::from(e.kind == Kind::Buyer);
    }

    let (a1, welcome) = t.agent("a1").await;
    let c = &welcome["conversations"][0];
    assert_eq!(c["conversation"], conv);
    assert_eq!(intents(c)[0], "in_sale.logistics", "{welcome}");

    // Moved to a colleague with the round still open: the same rule.
    let (mut a2, _) = t.agent("a2").await;
    a1.close().await;
    let moved = a2.recv_type("conversation_assigned").await;
    assert_eq!(moved["reason"], "reassigned");
    assert_eq!(intents(&moved)[0], "in_sale.logistics", "{moved}");
    t.stop().await;
}
