//! The service end to end: real tokio-tungstenite clients against the real
//! server on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::{close_code, spawn_app, spawn_app_with, spawn_local, test_config};
use futures_util::StreamExt;
use kefu::events::{Kind, Rating};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn http_routes() {
    let t = spawn_app().await;
    let cases = [
        ("GET /healthz HTTP/1.1", "HTTP/1.1 200", Some("ok")),
        ("GET /nowhere HTTP/1.1", "HTTP/1.1 404", None),
        ("POST /ws HTTP/1.1", "HTTP/1.1 405", None),
        // Load balancers' checks may use HEAD: the status, no body.
        ("HEAD /healthz HTTP/1.1", "HTTP/1.1 200", Some("")),
        ("POST /healthz HTTP/1.1", "HTTP/1.1 405", None),
        ("POST /api/report HTTP/1.1", "HTTP/1.1 405", None),
        // A plain GET on /ws without the upgrade headers.
        ("GET /ws HTTP/1.1", "HTTP/1.1 426", None),
    ];
    for (line, status, body) in cases {
        let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
        let req = format!("{line}\r\nHost: kefu\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with(status), "{line}: {resp}");
        match body {
            Some("") => assert!(resp.ends_with("\r\n\r\n"), "{line}: {resp}"),
            Some(b) => assert!(resp.ends_with(&format!("\r\n\r\n{b}\n")), "{line}: {resp}"),
            None => {}
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn buyer_is_welcomed_and_greeted_with_the_shop_name() {
    let mut t = spawn_app().await;
    let (_buyer, welcome, greeting) = t.buyer("b1").await;
    let conv = welcome["conversation"].as_str().unwrap();
    assert!(!conv.is_empty());
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["shop_name"], "测试旗舰店");
    assert!(
        welcome["resume"].as_str().unwrap().len() >= 32,
        "a long random secret"
    );
    assert_eq!(greeting["from"], "bot");
    assert_eq!(greeting["note"], "greeting");
    assert_eq!(
        greeting["text"],
        "亲，欢迎光临测试旗舰店！有什么可以帮您的吗？"
    );
    assert!(
        greeting["at"].as_i64().unwrap() > 1_600_000_000_000,
        "unix ms"
    );
    let events = t.take_events();
    let bot: Vec<_> = events.iter().filter(|e| e.kind == Kind::Bot).collect();
    assert_eq!(bot.len(), 1);
    assert_eq!(bot[0].note.as_deref(), Some("greeting"));
    assert_eq!(&*bot[0].conversation, conv);
    t.stop().await;
}

#[tokio::test]
async fn buyer_message_reaches_the_agent_with_suggestions_and_the_reply_comes_back() {
    let mut t = spawn_app().await;
    let (mut agent, welcome) = t.agent("a1").await;
    assert_eq!(welcome["agent"], "a1");
    assert_eq!(welcome["clock"]["target_ms"], 30_000);
    assert_eq!(welcome["clock"]["nudge_ms"], 20_000);
    let (mut buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].as_str().unwrap().to_string();
    let assigned = agent.recv_type("conversation_assigned").await;
    assert_eq!(assigned["conversation"], conv);
    assert_eq!(assigned["reason"], "new");
    assert_eq!(assigned["buyer"], "b1");

    buyer
        .send(json!({"type":"message","text":"这个有货吗"}))
        .await;
    let m = agent.recv_type("buyer_message").await;
    assert_eq!(m["conversation"], conv);
    assert_eq!(m["buyer"], "b1");
    assert_eq!(m["text"], "这个有货吗");
    let since = m["waiting_since"].as_i64().unwrap();
    assert_eq!(m["deadline"].as_i64().unwrap(), since + 30_000);
    assert_eq!(m["at"].as_i64().unwrap(), since);
    let s = &m["suggestions"][0];
    assert_eq!(s["stage"], "pre_sale");
    assert_eq!(s["intent"], "pre_sale.stock");
    assert!(s["score"].as_f64().unwrap() > 0.3);
    assert!(s["reply"].as_str().unwrap().starts_with("亲"));

    // The agent answers with the suggestion.
    agent
        .send(
            json!({"type":"reply","conversation":conv,"text":s["reply"],"intent":"pre_sale.stock"}),
        )
        .await;
    let r = buyer.recv_type("reply").await;
    assert_eq!(r["from"], "agent");
    // The buyer sees the agent's display name, never the agent's id (half
    // of the agent's sign-in; found by review).
    assert_eq!(r["agent_name"], "小美");
    assert!(r.get("agent").is_none(), "{r}");
    assert_eq!(r["text"], s["reply"]);
    let ack = agent.recv_type("reply_sent").await;
    assert_eq!(ack["conversation"], conv);
    assert_eq!(ack["delivered"], true);
    assert!(ack["response_ms"].as_i64().unwrap() >= 0);

    let events = t.take_events();
    let kinds: Vec<Kind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [Kind::Bot, Kind::Assign, Kind::Buyer, Kind::Agent]);
    assert_eq!(events[1].agent.as_deref(), Some("a1"));
    assert_eq!(events[2].intent.as_deref(), Some("pre_sale.stock"));
    assert_eq!(events[2].stage.as_deref(), Some("pre_sale"));
    assert_eq!(events[2].text.as_deref(), Some("这个有货吗"));
    assert_eq!(events[3].intent.as_deref(), Some("pre_sale.stock"));
    assert_eq!(events[3].agent.as_deref(), Some("a1"));
    t.stop().await;
}

#[tokio::test]
async fn suggestions_fill_the_agent_name_and_shop() {
    let t = spawn_app().await;
    let (mut agent, _) = t.agent("a1").await; // a1 is 小美
    let (mut buyer, _, _) = t.buyer("b1").await;
    agent.recv_type("conversation_assigned").await;
    buyer.send(json!({"type":"message","text":"在吗"})).await;
    let m = agent.recv_type("buyer_message").await;
    let reply = m["suggestions"][0]["reply"].as_str().unwrap();
    assert!(
        reply.contains("小美") || reply.contains("测试旗舰店"),
        "placeholders filled: {reply}"
    );
    assert!(!reply.contains('{'), "{reply}");
    t.stop().await;
}

#[tokio::test]
async fn conversations_go_to_the_least_busy_agent() {
    let t = spawn_app().await;
    let (mut a1, _) = t.agent("a1").await;
    let (mut a2, _) = t.agent("a2").await;
    let mut owners = Vec::new();
    let mut buyers = Vec::new();
    for i in 0..4 {
        let (b, w, _) = t.buyer(&format!("b{i}")).await;
        buyers.push(b);
        owners.push(w["conversation"].as_str().unwrap().to_string());
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..2 {
        got1.push(a1.recv_type("conversation_assigned").await["conversation"].clone());
        got2.push(a2.recv_type("conversation_assigned").await["conversation"].clone());
    }
    // Ties go to a1: b0→a1, b1→a2, b2→a1, b3→a2.
    assert_eq!(got1, [json!(owners[0]), json!(owners[2])]);
    assert_eq!(got2, [json!(owners[1]), json!(owners[3])]);
    t.stop().await;
}

#[tokio::test]
async fn agent_disconnect_moves_conversations_with_their_clock() {
    let mut t = spawn_app().await;
    let (mut a1, _) = t.agent("a1").await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].clone();
    a1.recv_type("conversation_assigned").await;
    buyer
        .send(json!({"type":"message","text":"什么时候发货"}))
        .await;
    let m = a1.recv_type("buyer_message").await;

    let (mut a2, _) = t.agent("a2").await;
    a1.close().await;
    let moved = a2.recv_type("conversation_assigned").await;
    assert_eq!(moved["reason"], "reassigned");
    assert_eq!(moved["conversation"], conv);
    // Same round: the clock kept running.
    assert_eq!(moved["waiting_since"], m["waiting_since"]);
    assert_eq!(moved["deadline"], m["deadline"]);
    assert_eq!(moved["suggestions"][0]["intent"], "in_sale.ship_time");
    let texts: Vec<_> = moved["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["from"].clone())
        .collect();
    assert_eq!(texts, [json!("bot"), json!("buyer")]);

    // The new owner can answer; the old one is gone.
    a2.send(
        json!({"type":"reply","conversation":conv,"text":"亲，今天就给您发出哦～","intent":null}),
    )
    .await;
    let r = buyer.recv_type("reply").await;
    assert_eq!(r["from"], "agent");
    // a2 has no display name: the buyer gets none, and not the id.
    assert!(
        r.get("agent").is_none() && r.get("agent_name").is_none(),
        "{r}"
    );
    let assigns: Vec<_> = t
        .take_events()
        .into_iter()
        .filter(|e| e.kind == Kind::Assign)
        .map(|e| (e.agent.unwrap().to_string(), e.note.unwrap().into_owned()))
        .collect();
    assert_eq!(
        assigns,
        [
            ("a1".to_string(), "new".to_string()),
            ("a2".to_string(), "reassigned".to_string())
        ]
    );
    t.stop().await;
}

#[tokio::test]
async fn waiting_buyers_go_to_the_first_agent_who_comes_online() {
    let t = spawn_app().await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    buyer.send(json!({"type":"message","text":"有货吗"})).await;
    let offline = buyer.recv_type("reply").await;
    assert_eq!(offline["note"], "offline");
    assert_eq!(
        offline["text"],
        "亲，客服暂时不在线，您先留言，我们会第一时间回复您～"
    );
    // A second message in the same round: no second offline reply.
    buyer.send(json!({"type":"message","text":"在吗"})).await;
    buyer.expect_silence(Duration::from_millis(200)).await;

    // The backlog travels in the agent's welcome, not as a frame each.
    let (mut a1, welcome) = t.agent("a1").await;
    let convs = welcome["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1, "{welcome}");
    let a = &convs[0];
    assert_eq!(a["conversation"], bw["conversation"]);
    assert!(a["waiting_since"].is_i64());
    let from: Vec<_> = a["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["note"].clone())
        .collect();
    assert_eq!(
        from,
        [
            json!("greeting"),
            json!(null),
            json!("offline"),
            json!(null)
        ]
    );
    a1.expect_silence(Duration::from_millis(100)).await;
    t.stop().await;
}

/// 双11 after a network blip: more buyers wait than an agent's outbound
/// queue holds frames. The agent who signs in gets them all in its welcome
/// and is not disconnected as a slow reader.
#[tokio::test]
async fn a_backlog_longer_than_the_queue_comes_in_the_welcome() {
    let mut config = test_config();
    config.limits.outbound_queue = 8;
    let t = spawn_app_with(config).await;
    let mut buyers = Vec::new();
    for i in 0..20 {
        let (mut b, _, _) = t.buyer(&format!("b{i}")).await;
        b.send(json!({"type":"message","text":"在吗"})).await;
        b.recv_type("reply").await; // the offline reply
        buyers.push(b);
    }
    let (mut a1, welcome) = t.agent("a1").await;
    let convs = welcome["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 20);
    // Still connected and working: answer the longest-waiting buyer.
    let first = convs[0]["conversation"].as_str().unwrap();
    a1.send(json!({"type":"reply","conversation":first,"text":"亲，让您久等了","intent":null}))
        .await;
    a1.recv_type("reply_sent").await;
    buyers[0].recv_until("reply").await;
    t.stop().await;
}

#[tokio::test]
async fn buyer_reconnects_only_with_the_resume_secret() {
    let t = spawn_app().await;
    let (mut agent, _) = t.agent("a1").await;
    let (buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].clone();
    let secret = bw["resume"].as_str().unwrap().to_string();
    agent.recv_type("conversation_assigned").await;
    buyer.close().await;
    let p = agent.recv_type("presence").await;
    assert_eq!(p["online"], false);

    // While the buyer is away the agent's reply is kept.
    agent
        .send(json!({"type":"reply","conversation":conv,"text":"亲，您的问题已经处理好啦～"}))
        .await;
    let ack = agent.recv_type("reply_sent").await;
    assert_eq!(ack["delivered"], false);

    // Anyone claiming b1 without (or with a wrong) secret is refused and closed.
    for resume in [None, Some("0".repeat(32)), Some(secret[..31].to_string())] {
        let mut c = t.connect().await;
        let mut hello = json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1"});
        if let Some(r) = resume {
            hello["resume"] = json!(r);
        }
        c.send(hello).await;
        let (before, frame) = c.expect_close().await;
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0]["code"], "buyer_taken");
        assert_eq!(close_code(&frame), Some(CloseCode::Policy));
    }

    // The secret rejoins the same conversation, with the history.
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":secret}))
        .await;
    let w = c.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["conversation"], conv);
    let history = w["history"].as_array().unwrap();
    assert_eq!(
        history.last().unwrap()["text"],
        "亲，您的问题已经处理好啦～"
    );
    assert_eq!(history.last().unwrap()["from"], "agent");
    // By display name, never by id, in the buyer's history too.
    assert_eq!(history.last().unwrap()["agent_name"], "小美");
    assert!(history.iter().all(|l| l.get("agent").is_none()), "{w}");
    assert_eq!(agent.recv_type("presence").await["online"], true);
    // And keeps chatting in it.
    c.send(json!({"type":"message","text":"谢谢"})).await;
    assert_eq!(agent.recv_type("buyer_message").await["conversation"], conv);
    t.stop().await;
}

/// A page that lost its link learns from `received` which of its messages
/// arrived: the history cannot say once it is cut to its newest lines and
/// the buyer repeats a text (found by review).
#[tokio::test]
async fn a_resumed_welcome_counts_the_buyers_messages_taken() {
    let mut config = common::test_config();
    config.limits.history_bytes = 400;
    let t = spawn_app_with(config).await;
    let (mut agent, _) = t.agent("a1").await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    assert_eq!(bw["received"], 0, "{bw}");
    agent.recv_type("conversation_assigned").await;
    buyer.send(json!({"type":"message","text":"在吗"})).await;
    // Refused: not counted.
    buyer.send(json!({"type":"message","text":"   "})).await;
    assert_eq!(buyer.recv_type("error").await["code"], "empty_text");
    buyer
        .send(json!({"type":"message","text":"好".repeat(150)}))
        .await;
    buyer.send(json!({"type":"message","text":"在吗"})).await;
    for _ in 0..3 {
        agent.recv_type("buyer_message").await;
    }
    buyer.close().await;
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":bw["resume"]}))
        .await;
    let w = c.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["received"], 3, "{w}");
    // The history alone would say one 在吗 arrived, not two.
    let history = w["history"].as_array().unwrap();
    let asked = history.iter().filter(|l| l["text"] == "在吗").count();
    assert_eq!(asked, 1, "{w}");
    t.stop().await;
}

#[tokio::test]
async fn a_second_tab_with_the_secret_replaces_the_first() {
    let t = spawn_app().await;
    let (mut first, bw, _) = t.buyer("b1").await;
    let mut second = t.connect().await;
    second
        .send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":bw["resume"]}))
        .await;
    assert_eq!(second.recv_type("welcome").await["resumed"], true);
    let (before, frame) = first.expect_close().await;
    assert_eq!(before.last().unwrap()["code"], "replaced");
    assert_eq!(close_code(&frame), Some(CloseCode::Policy));
    t.stop().await;
}

#[tokio::test]
async fn agents_need_the_right_token() {
    let t = spawn_app().await;
    let cases = [
        json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"wrong"}),
        json!({"type":"hello","role":"agent","shop":"s1","agent":"a1"}),
        json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":""}),
        json!({"type":"hello","role":"agent","shop":"s1","agent":"nobody","token":"t1"}),
        json!({"type":"hello","role":"agent","shop":"s2","agent":"a1","token":"t1"}),
        json!({"type":"hello","role":"agent","shop":"nowhere","agent":"a1","token":"t1"}),
    ];
    for hello in cases {
        let mut c = t.connect().await;
        c.send(hello.clone()).await;
        let (before, frame) = c.expect_close().await;
        assert_eq!(before.len(), 1, "{hello}: {before:?}");
        assert_eq!(before[0]["code"], "bad_token", "{hello}");
        assert_eq!(close_code(&frame), Some(CloseCode::Policy), "{hello}");
    }
    // A buyer of an unknown shop is refused the same way.
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"nowhere","buyer":"b1"}))
        .await;
    let (before, frame) = c.expect_close().await;
    assert_eq!(before[0]["code"], "unknown_shop");
    assert_eq!(close_code(&frame), Some(CloseCode::Policy));
    t.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let t = spawn_app().await;
    let long = "好".repeat(2001);
    // Before hello.
    let before_hello: Vec<(Message, &str)> = vec![
        (Message::text("not json"), "bad_json"),
        (Message::text("[1,2,3]"), "bad_json"),
        (Message::text("{}"), "missing_type"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_type"),
        (
            Message::text(r#"{"type":"message","text":"在吗"}"#),
            "hello_first",
        ),
        (
            Message::text(r#"{"type":"hello","role":"buyer","shop":"s1"}"#),
            "bad_message",
        ),
        (
            Message::text(r#"{"type":"hello","role":"boss","shop":"s1"}"#),
            "bad_message",
        ),
        (
            Message::text(r#"{"type":"hello","role":"buyer","shop":"s1","buyer":""}"#),
            "bad_id",
        ),
        (Message::binary(vec![1u8, 2, 3]), "binary_not_supported"),
    ];
    let mut c = t.connect().await;
    for (frame, code) in before_hello {
        c.send_raw(frame.clone()).await;
        c.expect_error(code).await;
    }
    // Still usable: hello works now.
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}))
        .await;
    c.recv_type("welcome").await;
    c.recv_type("reply").await;
    let after_hello: Vec<(serde_json::Value, &str)> = vec![
        (json!({"type":"message","text":long}), "text_too_long"),
        (json!({"type":"message","text":"  "}), "empty_text"),
        (json!({"type":"message"}), "bad_message"),
        (
            json!({"type":"reply","conversation":"c1","text":"hi"}),
            "wrong_role",
        ),
        (json!({"type":"lint","text":"hi"}), "wrong_role"),
        (
            json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b2"}),
            "already_hello",
        ),
        (json!({"type":"rate","score":"great"}), "bad_score"),
    ];
    for (frame, code) in after_hello {
        c.send(frame).await;
        c.expect_error(code).await;
    }
    c.send_raw(Message::binary(vec![0u8; 10])).await;
    c.expect_error("binary_not_supported").await;
    // The connection still works after all of that.
    c.send(json!({"type":"rate","score":"satisfied"})).await;
    c.recv_type("rated").await;

    // Agents: wrong role, unknown conversation.
    let (mut a, welcome) = t.agent("a2").await;
    // b1, who waited, comes with the welcome.
    assert_eq!(welcome["conversations"].as_array().unwrap().len(), 1);
    let cases = [
        (json!({"type":"message","text":"hi"}), "wrong_role"),
        (json!({"type":"rate","score":"satisfied"}), "wrong_role"),
        (
            json!({"type":"reply","conversation":"c-none","text":"亲"}),
            "unknown_conversation",
        ),
        (
            json!({"type":"reply","conversation":"c-none"}),
            "bad_message",
        ),
        (
            json!({"type":"lint","text":"好".repeat(2001)}),
            "text_too_long",
        ),
    ];
    for (frame, code) in cases {
        a.send(frame).await;
        a.expect_error(code).await;
    }
    t.stop().await;
}

/// A buyer who resumes faster than their conversation's rate is refused
/// and the socket closed with 1013 (try again later), through the real
/// connection path; a message over the rate on an open connection is
/// dropped and the connection stays.
#[tokio::test]
async fn a_resume_over_the_conversations_rate_is_closed_with_1013() {
    let mut config = test_config();
    config.limits.rate_per_sec = 0.01;
    config.limits.rate_burst = 3;
    let t = spawn_app_with(config).await;
    let (b, welcome, _) = t.buyer("b1").await;
    let secret = welcome["resume"].as_str().unwrap().to_string();
    b.close().await;
    let resume = json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":secret});
    // The burst of 3: two resumes and a message on the second.
    for i in 0..2 {
        let mut c = t.connect().await;
        c.send(resume.clone()).await;
        c.recv_type("welcome").await;
        if i == 1 {
            c.send(json!({"type":"message","text":"在吗"})).await;
            c.send(json!({"type":"message","text":"在吗在吗"})).await;
            // After the bot's offline reply to the first (no agent online).
            assert_eq!(c.recv_until("error").await["code"], "rate_limited");
            c.send(json!({"type":"message","text":"还在吗"})).await;
            assert_eq!(c.recv_until("error").await["code"], "rate_limited");
        }
        c.close().await;
    }
    let mut c = t.connect().await;
    c.send(resume).await;
    let (frames, frame) = c.expect_close().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "rate_limited");
    assert_eq!(close_code(&frame), Some(CloseCode::Again));
    t.stop().await;
}

/// Both welcomes say the longest text the server takes, the shop's setting
/// rather than the default the pages assumed, and it is the limit the
/// server then applies.
#[tokio::test]
async fn welcomes_carry_the_text_limit_the_server_applies() {
    for limit in [500, 2000] {
        let mut config = test_config();
        config.limits.max_text_chars = limit;
        let t = spawn_app_with(config).await;
        let (mut a, agent_welcome) = t.agent("a1").await;
        let (mut b, buyer_welcome, _) = t.buyer("b1").await;
        assert_eq!(agent_welcome["max_text_chars"], limit, "agent");
        assert_eq!(buyer_welcome["max_text_chars"], limit, "buyer");
        let conv = a.recv_type("conversation_assigned").await["conversation"].clone();
        b.send(json!({"type":"message","text":"好".repeat(limit + 1)}))
            .await;
        b.expect_error("text_too_long").await;
        b.send(json!({"type":"message","text":"好".repeat(limit)}))
            .await;
        a.recv_type("buyer_message").await;
        a.send(json!({"type":"lint","text":"好".repeat(limit + 1)}))
            .await;
        a.expect_error("text_too_long").await;
        a.send(json!({"type":"reply","conversation":conv,"text":"亲".repeat(limit)}))
            .await;
        a.recv_type("reply_sent").await;
        t.stop().await;
    }
}

#[tokio::test]
async fn agents_cannot_reply_in_someone_elses_conversation() {
    let t = spawn_app().await;
    let (mut a1, _) = t.agent("a1").await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    a1.recv_type("conversation_assigned").await;
    let (mut a2, _) = t.agent("a2").await;
    a2.send(json!({"type":"reply","conversation":bw["conversation"],"text":"亲，我来啦"}))
        .await;
    a2.expect_error("unknown_conversation").await;
    buyer.expect_silence(Duration::from_millis(200)).await;
    t.stop().await;
}

#[tokio::test]
async fn frames_over_64_kib_close_with_1009() {
    let t = spawn_app().await;
    let (mut ok_agent, _) = t.agent("a1").await;
    let (mut ok_buyer, _, _) = t.buyer("b0").await;
    ok_agent.recv_type("conversation_assigned").await;

    let (mut big, _, _) = t.buyer("b1").await;
    ok_agent.recv_type("conversation_assigned").await;
    let text = format!(r#"{{"type":"message","text":"{}"}}"#, "x".repeat(70 * 1024));
    big.send_raw(Message::text(text)).await;
    let (_, frame) = big.expect_close().await;
    assert_eq!(close_code(&frame), Some(CloseCode::Size));

    // Nobody else noticed.
    ok_buyer
        .send(json!({"type":"message","text":"有货吗"}))
        .await;
    let m = ok_agent.recv_until("buyer_message").await;
    assert_eq!(m["text"], "有货吗");
    t.stop().await;
}

#[tokio::test]
async fn lint_checks_the_agents_draft() {
    let t = spawn_app().await;
    let (mut a, _) = t.agent("a1").await;
    let cases = [
        ("不能退", false, Some(("negative", "不能"))),
        ("好的", false, Some(("curt", "好的"))),
        ("亲，马上为您处理好哦～", true, None),
    ];
    for (draft, ok, issue) in cases {
        a.send(json!({"type":"lint","text":draft})).await;
        let r = a.recv_type("lint_result").await;
        assert_eq!(r["text"], draft);
        assert_eq!(r["ok"], ok, "{draft}");
        if let Some((kind, phrase)) = issue {
            assert_eq!(r["issues"][0]["kind"], kind);
            assert_eq!(r["issues"][0]["phrase"], phrase);
            assert!(
                r["issues"][0]["rewrite"]
                    .as_str()
                    .unwrap()
                    .starts_with("亲")
                    || kind == "curt"
            );
        } else {
            assert_eq!(r["issues"], json!([]));
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn buyer_rates_once_and_the_agent_hears_it() {
    let mut t = spawn_app().await;
    let (mut a, _) = t.agent("a1").await;
    let (mut b, bw, _) = t.buyer("b1").await;
    a.recv_type("conversation_assigned").await;
    b.send(json!({"type":"rate","score":"very_satisfied"}))
        .await;
    let r = b.recv_type("rated").await;
    assert_eq!(r["score"], "very_satisfied");
    let r = a.recv_type("rated").await;
    assert_eq!(r["conversation"], bw["conversation"]);
    b.send(json!({"type":"rate","score":"dissatisfied"})).await;
    b.expect_error("already_rated").await;
    // A reloaded page learns the rating from the welcome (it offered the
    // rating again and got `already_rated`).
    assert!(bw.get("rated").is_none(), "{bw}");
    b.close().await;
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":bw["resume"]}))
        .await;
    let w = c.recv_type("welcome").await;
    assert_eq!(w["rated"], "very_satisfied", "{w}");
    let ratings: Vec<_> = t
        .take_events()
        .into_iter()
        .filter(|e| e.kind == Kind::Rating)
        .collect();
    assert_eq!(ratings.len(), 1);
    assert_eq!(ratings[0].score, Some(Rating::VerySatisfied));
    assert_eq!(ratings[0].agent.as_deref(), Some("a1"));
    t.stop().await;
}

#[tokio::test]
async fn rate_limit_drops_the_excess_and_keeps_the_connection() {
    let mut config = test_config();
    config.limits.rate_per_sec = 1.0;
    config.limits.rate_burst = 3;
    let t = spawn_app_with(config).await;
    let (mut a, _) = t.agent("a1").await; // hello took one token
    for _ in 0..2 {
        a.send(json!({"type":"lint","text":"亲"})).await;
        a.recv_type("lint_result").await;
    }
    a.send(json!({"type":"lint","text":"亲"})).await;
    a.expect_error("rate_limited").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.send(json!({"type":"lint","text":"亲"})).await;
    a.recv_type("lint_result").await;
    t.stop().await;
}

/// A buyer's frames wait for room in the sleeper's queue up to the write
/// timeout (see the next test); then the sleeper is dropped.
#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_and_others_carry_on() {
    let mut config = test_config();
    config.limits.outbound_queue = 16;
    config.limits.write_timeout = Duration::from_millis(500);
    let t = spawn_app_with(config).await;
    // Shop s1: agent a1 gets b1's flood and never reads.
    let (mut sleeper, _) = t.agent("a1").await;
    let (mut flooder, _, _) = t.buyer("b1").await;
    // Shop s2: an agent and a buyer chatting normally meanwhile.
    let mut agent2 = t.connect().await;
    agent2
        .send(json!({"type":"hello","role":"agent","shop":"s2","agent":"b1","token":"u1"}))
        .await;
    agent2.recv_type("welcome").await;
    let (mut buyer2, _, _) = t.buyer_of("s2", "x1").await;
    agent2.recv_type("conversation_assigned").await;

    let text = "有货吗".repeat(600);
    let mut sent = 0;
    while t.app.stats().agents_online == 2 {
        assert!(sent < 20_000, "the agent who does not read is disconnected");
        flooder.send(json!({"type":"message","text":text})).await;
        sent += 1;
        if sent % 100 == 0 {
            // The other shop's chat works all along.
            buyer2.send(json!({"type":"message","text":"在吗"})).await;
            assert_eq!(agent2.recv_type("buyer_message").await["buyer"], "x1");
        }
    }
    buyer2.send(json!({"type":"message","text":"有货吗"})).await;
    assert_eq!(agent2.recv_type("buyer_message").await["text"], "有货吗");
    // b1 now waits for an agent and is told so once.
    assert_eq!(flooder.recv_until("reply").await["note"], "offline");
    // The sleeper, reading at last, finds its socket closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sleeper.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the server ended the connection");
    assert!(
        matches!(closed, None | Some(CloseCode::Policy)),
        "{closed:?}"
    );
    t.stop().await;
}

/// 双11's first minute: buyers send faster than an agent's connection
/// takes frames (here the agent stops reading for 3 s, within the write
/// timeout, with far more frames than its queue and the pipe hold). The
/// buyers' tasks wait for room, so every message reaches the agent, in
/// order, and nobody is dropped as a slow reader.
#[tokio::test(start_paused = true)]
async fn buyers_wait_for_a_busy_agent_instead_of_the_agent_being_dropped() {
    let mut config = test_config();
    config.limits.outbound_queue = 8;
    let t = spawn_local(config).await;
    let (mut agent, _) = t.agent("a1").await;
    let mut buyers = t.buyers_assigned(&mut agent, 4).await;
    // About 2 KB a frame: the 256 KiB pipe and the queue of 8 fill up
    // long before the 400 messages are through.
    let text = "请问这款有货吗".repeat(90);
    for n in 0..100 {
        for b in buyers.iter_mut() {
            b.send(json!({"type":"message","text":format!("{n} {text}")}))
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.app.stats().agents_online, 1, "the agent is still online");
    let mut next = std::collections::HashMap::new();
    for _ in 0..400 {
        let m = agent.recv_type("buyer_message").await;
        let n: u32 = m["text"]
            .as_str()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let seen = next
            .entry(m["buyer"].as_str().unwrap().to_string())
            .or_insert(0);
        assert_eq!(n, *seen, "each buyer's messages in order: {m}");
        *seen += 1;
    }
    assert_eq!(t.app.stats().agents_online, 1);
}

#[tokio::test]
async fn hello_must_come_in_time() {
    let mut config = test_config();
    config.limits.hello_timeout = Duration::from_millis(200);
    let t = spawn_app_with(config).await;
    let mut c = t.connect().await;
    let (before, frame) = c.expect_close().await;
    assert_eq!(before[0]["code"], "hello_timeout");
    assert_eq!(close_code(&frame), Some(CloseCode::Policy));
    t.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let t = spawn_app().await;
    let (mut a, _) = t.agent("a1").await;
    let (mut b, _, _) = t.buyer("b1").await;
    a.recv_type("conversation_assigned").await;
    let app = t.app.clone();
    let stop = tokio::spawn(t.stop());
    for c in [&mut a, &mut b] {
        let (_, frame) = c.expect_close().await;
        assert_eq!(close_code(&frame), Some(CloseCode::Away));
    }
    stop.await.unwrap();
    assert_eq!(app.stats().agents_online, 0);
}

#[tokio::test]
async fn hot_reload_swaps_good_libraries_and_keeps_old_ones_on_error() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::fixture_phrases()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let mut config = test_config();
    config.phrases = dir.path().to_path_buf();
    config.reload_poll = Some(Duration::from_millis(50));
    let t = spawn_app_with(config).await;
    let (mut a, _) = t.agent("a1").await;
    let (mut b, _, _) = t.buyer("b1").await;
    a.recv_type("conversation_assigned").await;

    // A broken edit: the agent is told where, the old library stays.
    let path = dir.path().join("pre_sale.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, "stage: pre_sale\nintents:\n  - id: [oops\n").unwrap();
    let r = a.recv_type("reload").await;
    assert_eq!(r["ok"], false);
    let err = r["errors"][0].as_str().unwrap();
    assert!(err.contains("pre_sale.yaml:3:"), "file and line: {err}");
    b.send(json!({"type":"message","text":"有货吗"})).await;
    let m = a.recv_type("buyer_message").await;
    assert_eq!(
        m["suggestions"][0]["intent"], "pre_sale.stock",
        "old library kept"
    );

    // A good edit takes effect without a restart.
    std::fs::write(&path, good.replace("有货, ", "有货, 囤货, ")).unwrap();
    let r = a.recv_type("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["intents"], 5);
    b.send(json!({"type":"message","text":"囤货"})).await;
    let m = a.recv_type("buyer_message").await;
    assert_eq!(
        m["suggestions"][0]["intent"], "pre_sale.stock",
        "new keyword matches"
    );
    t.stop().await;
}

/// A client may send its first frame right behind the handshake, before
/// the 101 arrives: the bytes the HTTP layer read ahead must reach the
/// WebSocket.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_not_lost() {
    let t = spawn_app().await;
    let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    let hello = br#"{"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}"#;
    let mut bytes =
        b"GET /ws HTTP/1.1\r\nHost: kefu\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    // One masked text frame (FIN, length < 126).
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    bytes.extend([0x81, 0x80 | hello.len() as u8]);
    bytes.extend(mask);
    bytes.extend(hello.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&bytes).await.unwrap();
    // The response head, a byte at a time so nothing after it is taken.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        s,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer to the hello")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "welcome", "{v}");
    assert_eq!(v["role"], "buyer", "{v}");
    t.stop().await;
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_after_the_handshake_timeout() {
    let mut config = test_config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    let t = spawn_app_with(config).await;
    let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the server hangs up")
        .unwrap_or(0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // hyper may answer 408 before closing; either way nothing else.
    assert!(
        n == 0 || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{buf:?}"
    );
    t.stop().await;
}

/// Without a staff reserve, past the limit everyone gets the 503 (it was a
/// dropped socket; tests/capacity.rs has the reserve).
#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    config.limits.staff_reserve = 0;
    let t = spawn_app_with(config).await;
    let (_a, _) = t.agent("a1").await;
    let (_b, _, _) = t.buyer("b1").await;
    let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("refused at once")
        .expect("a clean close, not a reset");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    t.stop().await;
}

#[tokio::test]
async fn quiet_clients_are_pinged_and_dead_ones_dropped() {
    let mut config = test_config();
    config.limits.ping_interval = Duration::from_millis(100);
    let t = spawn_app_with(config).await;
    let (mut alive, _) = t.agent("a1").await;
    let (mut dead, _) = t.agent("a2").await;
    // `alive` keeps reading, so its client answers the pings; `dead` does not.
    alive.expect_silence(Duration::from_millis(600)).await;
    alive.send(json!({"type":"lint","text":"亲"})).await;
    alive.recv_type("lint_result").await;
    let mut pings = 0;
    let code = loop {
        match dead.ws.next().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pings >= 1, "pinged before being dropped");
    assert_eq!(code, Some(CloseCode::Away));
    t.stop().await;
}

/// An agent with more conversations than a colleague's outbound queue holds
/// (256 frames here) leaves: the colleague gets them in one frame and stays
/// online. One frame per conversation overflowed the queue, and the
/// colleague was dropped as a slow reader along with the leaver.
#[tokio::test]
async fn a_move_larger_than_the_queue_arrives_in_one_frame() {
    const HELD: usize = 300;
    let mut config = test_config();
    config.limits.outbound_queue = 256;
    let t = spawn_app_with(config).await;
    let (mut a1, _) = t.agent("a1").await;
    let mut buyers = t.buyers_assigned(&mut a1, HELD).await;
    let (mut a2, welcome) = t.agent("a2").await;
    assert_eq!(welcome["conversations"], json!([]));
    a1.close().await;

    let moved = a2.recv_type("conversations_assigned").await;
    assert_eq!(moved["reason"], "reassigned");
    let convs = moved["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), HELD);
    let buyer_ids: std::collections::HashSet<_> =
        convs.iter().map(|c| c["buyer"].as_str().unwrap()).collect();
    assert_eq!(buyer_ids.len(), HELD);
    assert!(convs.iter().all(|c| c["history"][0]["note"] == "greeting"));

    // Still online and in charge: the last buyer's message reaches a2.
    buyers[HELD - 1]
        .send(json!({"type":"message","text":"有货吗"}))
        .await;
    let m = a2.recv_type("buyer_message").await;
    assert_eq!(m["buyer"], format!("b{}", HELD - 1));
    t.stop().await;
}

/// A move of a single conversation keeps the single-conversation frame.
#[tokio::test]
async fn a_move_of_one_conversation_keeps_its_own_frame() {
    let t = spawn_app().await;
    let (mut a1, _) = t.agent("a1").await;
    let (_b, bw, _) = t.buyer("b1").await;
    a1.recv_type("conversation_assigned").await;
    let (mut a2, _) = t.agent("a2").await;
    a1.close().await;
    let moved = a2.recv().await;
    assert_eq!(moved["type"], "conversation_assigned", "{moved}");
    assert_eq!(moved["conversation"], bw["conversation"]);
    t.stop().await;
}

/// A backlog of long conversations larger than any fixed write buffer
/// reaches the agent who signs in, in their welcome (it used to drop the
/// agent silently: tungstenite refused the one large frame).
#[tokio::test]
async fn a_large_backlog_reaches_the_agent_in_their_welcome() {
    const WAITING: usize = 40;
    let t = spawn_app().await;
    let long = "退货".repeat(1000);
    let mut buyers = Vec::new();
    for i in 0..WAITING {
        let (mut b, _, _) = t.buyer(&format!("b{i}")).await;
        for _ in 0..3 {
            b.send(json!({"type":"message","text":long})).await;
        }
        buyers.push(b);
    }
    // Every message is in before the agent signs in.
    for b in &mut buyers {
        b.recv_type("reply").await; // the one offline reply of the round
    }
    let (mut a1, welcome) = t.agent("a1").await;
    let convs = welcome["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), WAITING);
    assert!(
        welcome.to_string().len() > 400 * 1024,
        "a frame larger than the old cap"
    );
    buyers[0]
        .send(json!({"type":"message","text":"在吗"}))
        .await;
    assert_eq!(a1.recv_type("buyer_message").await["buyer"], "b0");
    t.stop().await;
}

/// Pings share the message rate: tungstenite queues a pong for each, so a
/// client that floods pings without reading made the pongs pile up in the
/// server's memory (1.25 MB for 10,000 pings in a review). A flood over
/// the rate is closed (1008); pings within it are answered as before.
#[tokio::test]
async fn a_ping_flood_is_closed_and_pings_within_the_rate_are_fine() {
    let mut config = test_config();
    config.limits.rate_per_sec = 20.0;
    config.limits.rate_burst = 40;
    let t = spawn_app_with(config).await;
    let (mut calm, _, _) = t.buyer("b1").await;
    for _ in 0..5 {
        calm.send_raw(Message::Ping(vec![1u8; 16].into())).await;
    }
    calm.send(json!({"type":"message","text":"在吗"})).await;
    calm.recv_type("reply").await; // the offline reply: still served

    let (mut flood, _, _) = t.buyer("b2").await;
    for _ in 0..200 {
        flood.send_raw(Message::Ping(vec![7u8; 125].into())).await;
    }
    let (_, frame) = flood.expect_close().await;
    assert_eq!(close_code(&frame), Some(CloseCode::Policy), "{frame:?}");
    assert_eq!(frame.unwrap().reason.as_str(), "too many pings");
    t.stop().await;
}

/// Found by review: the history budget counted text bytes only, so a buyer
/// sending one-character messages could keep 16,384 lines (about 1 MB of
/// JSON in every welcome carrying the conversation). Each line now costs
/// its text plus 64 bytes.
#[tokio::test]
async fn many_short_lines_do_not_grow_the_history() {
    let t = spawn_app().await;
    let (mut a, _) = t.agent("a1").await;
    let (mut b, w, _) = t.buyer("b1").await;
    for _ in 0..600 {
        b.send(json!({"type":"message","text":"嗯"})).await;
    }
    b.send(json!({"type":"message","text":"最后一句"})).await;
    while a.recv_until("buyer_message").await["text"] != "最后一句" {}
    // A second sign-in of a1 (a page reload) gets the conversation whole.
    let (_a, welcome) = t.agent("a1").await;
    let conv = &welcome["conversations"][0];
    assert_eq!(conv["conversation"], w["conversation"]);
    let history = conv["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["text"], "最后一句");
    // 16 KiB / (3 + 64) bytes a line: at most 244 lines.
    assert!(history.len() <= 245, "{} lines kept", history.len());
    assert!(history.len() >= 200, "{} lines kept", history.len());
    t.stop().await;
}

/// 转接 over the socket: the agents see each other come online; a1 hands
/// its waiting buyer to a2 with a note after refusals that change nothing;
/// a2 gets it marked as transferred with the round's deadline unchanged,
/// a1 is told it left, the buyer gets one bot line; the buyer's next
/// message goes to a2, a1 may no longer reply; and the report gives the
/// unanswered round to a2.
#[tokio::test]
async fn an_agent_transfers_a_conversation_to_a_colleague() {
    use kefu::report::{self, GroupBy, ReportOptions, ServiceWindow};

    let mut t = spawn_app().await;
    let (mut a1, w1) = t.agent("a1").await;
    a1.keep_colleague_frames();
    assert_eq!(
        w1["colleagues"],
        json!([{"agent":"a2","name":null,"online":false},{"agent":"a3","name":null,"online":false}])
    );
    let (mut a2, w2) = t.agent("a2").await;
    assert_eq!(
        w2["colleagues"],
        json!([{"agent":"a1","name":"小美","online":true},{"agent":"a3","name":null,"online":false}])
    );
    assert_eq!(
        a1.recv_type("colleague").await,
        json!({"type":"colleague","agent":"a2","name":null,"online":true})
    );
    let (mut buyer, welcome, _) = t.buyer("b1").await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    assert_eq!(a1.recv_type("conversation_assigned").await["buyer"], "b1");
    buyer
        .send(json!({"type":"message","text":"能退货吗"}))
        .await;
    let asked = a1.recv_type("buyer_message").await;

    let transfer =
        |to: &str, note: &str| json!({"type":"transfer","conversation":conv,"to":to,"note":note});
    for (to, note, code) in [
        ("a3", "", "agent_offline"),
        ("a1", "", "self_transfer"),
        ("zz", "", "unknown_agent"),
        ("b1", "", "unknown_agent"),
        ("a2", &"长".repeat(201), "text_too_long"),
    ] {
        a1.send(transfer(to, note)).await;
        a1.expect_error(code).await;
    }
    a2.send(transfer("a1", "")).await;
    a2.expect_error("unknown_conversation").await;

    a1.send(transfer("a2", "买家问退货运费")).await;
    let done = a1.recv_type("conversation_transferred").await;
    assert_eq!(
        (&done["conversation"], &done["to"]),
        (&json!(conv), &json!("a2"))
    );
    let got = a2.recv_type("conversation_assigned").await;
    assert_eq!(got["reason"], "transferred");
    assert_eq!(got["from"], "a1");
    assert_eq!(got["note"], "买家问退货运费");
    assert_eq!(got["conversation"], json!(conv));
    assert_eq!(got["waiting_since"], asked["waiting_since"]);
    assert_eq!(got["deadline"], asked["deadline"]);
    let told = buyer.recv_type("reply").await;
    assert_eq!(
        (&told["from"], &told["note"]),
        (&json!("bot"), &json!("transferred"))
    );

    buyer
        .send(json!({"type":"message","text":"运费谁出"}))
        .await;
    let next = a2.recv_type("buyer_message").await;
    assert_eq!(next["text"], "运费谁出");
    assert_eq!(next["deadline"], asked["deadline"], "the same round");
    a1.send(json!({"type":"reply","conversation":conv,"text":"亲，在的"}))
        .await;
    a1.expect_error("unknown_conversation").await;

    let events = t.take_events();
    let assign = events
        .iter()
        .rfind(|e| e.kind == Kind::Assign)
        .expect("an assign event");
    assert_eq!(assign.agent.as_deref(), Some("a2"));
    assert_eq!(assign.note.as_deref(), Some("transferred"));
    assert_eq!(assign.text.as_deref(), Some("买家问退货运费"));
    let r = report::compute(
        &events,
        &ReportOptions {
            by: Some(GroupBy::Agent),
            service_window: ServiceWindow::ALL_DAY,
            ..ReportOptions::default()
        },
    );
    let groups: Vec<(String, u64, u64)> = r
        .groups
        .unwrap()
        .into_iter()
        .map(|g| (g.key, g.figures.rounds, g.figures.answered))
        .collect();
    assert_eq!(groups, [("a2".to_string(), 1, 0)]);
    t.stop().await;
}

/// The staff-only history lines (`from: "system"`) of a history, as
/// (sender, receiver, note) each.
fn transfer_lines(history: &serde_json::Value) -> Vec<(String, String, String)> {
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["from"] == "system")
        .map(|l| {
            assert_eq!(l["note"], "transferred", "{l}");
            let s = |k: &str| l[k].as_str().unwrap_or("?").to_string();
            (s("agent"), s("to"), s("text"))
        })
        .collect()
}

/// The next frame's raw text: privacy checks look at what was sent, not
/// only at the fields a parser picks.
async fn raw_text(c: &mut common::Client) -> String {
    match c.next_frame().await {
        Some(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// A transfer's note stays with the conversation for agents: a1 hands
/// the buyer to a2 with a note; a2's reload still has it as a staff-only
/// history line (who, to whom, when, the note); a2 hands it on to a3
/// without a note (a marker line, so a3 sees who sent it) and a3 sees
/// both; a grouped move to a2 carries both. The buyer sees none of it: not
/// in the frames of the transfers, not in the resumed welcome's raw text.
#[tokio::test]
async fn a_transfer_note_stays_in_the_history_for_agents_only() {
    const NOTE: &str = "买家要退款，订单已核对";
    let t = spawn_app().await;
    let (mut a1, _) = t.agent("a1").await;
    let (mut a2, _) = t.agent("a2").await;
    let (mut a3, _) = t.agent("a3").await;
    let (mut buyer, welcome, _) = t.buyer("b1").await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    let secret = welcome["resume"].as_str().unwrap().to_string();
    a1.recv_type("conversation_assigned").await;
    buyer
        .send(json!({"type":"message","text":"我要退款"}))
        .await;
    a1.recv_type("buyer_message").await;

    a1.send(json!({"type":"transfer","conversation":conv,"to":"a2","note":NOTE}))
        .await;
    let done = a1.recv_type("conversation_transferred").await;
    let at = done["at"].as_i64().unwrap();
    let got = a2.recv_type("conversation_assigned").await;
    // The frame's own fields as before, and the line in its history.
    assert_eq!((&got["from"], &got["note"]), (&json!("a1"), &json!(NOTE)));
    assert_eq!(
        got["history"].as_array().unwrap().last().unwrap(),
        &json!({"from":"system","agent":"a1","to":"a2","text":NOTE,"at":at,"note":"transferred"})
    );
    let mut to_buyer = vec![raw_text(&mut buyer).await];

    // a2 reloads the workbench: the note is still there.
    let (mut a2, w2) = t.agent("a2").await;
    let history = &w2["conversations"][0]["history"];
    let one = vec![("a1".to_string(), "a2".to_string(), NOTE.to_string())];
    assert_eq!(transfer_lines(history), one, "{w2}");

    // On to a3 without a note: a marker line; a3 sees both.
    a2.send(json!({"type":"transfer","conversation":conv,"to":"a3","note":""}))
        .await;
    a2.recv_type("conversation_transferred").await;
    let got = a3.recv_type("conversation_assigned").await;
    assert!(got.get("note").is_none(), "{got}");
    let both = vec![
        one[0].clone(),
        ("a2".to_string(), "a3".to_string(), String::new()),
    ];
    assert_eq!(transfer_lines(&got["history"]), both);
    to_buyer.push(raw_text(&mut buyer).await);
    for told in &to_buyer {
        assert!(told.contains(r#""note":"transferred""#), "{told}");
    }

    // The buyer's frames and resumed welcome: no staff line, no note.
    buyer.send(json!({"type":"message","text":"还在吗"})).await;
    a3.recv_type("buyer_message").await;
    let mut back = t.connect().await;
    back.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1","resume":secret}))
        .await;
    let raw = raw_text(&mut back).await;
    let parsed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed["resumed"], true, "{raw}");
    assert!(transfer_lines(&parsed["history"]).is_empty(), "{raw}");
    let (before, _) = buyer.expect_close().await;
    to_buyer.extend(before.iter().map(|v| v.to_string()));
    to_buyer.push(raw.clone());
    for frame in &to_buyer {
        for secret_bit in ["买家要退款", "订单已核对", "system", r#""to":"#] {
            assert!(!frame.contains(secret_bit), "{secret_bit} in {frame}");
        }
    }
    // What the buyer does see: the chat and the bot's transfer lines.
    let froms: Vec<&str> = parsed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["from"].as_str().unwrap())
        .collect();
    assert_eq!(froms, ["bot", "buyer", "bot", "bot", "buyer"], "{raw}");

    // A grouped move: b2 comes to a1, who hands it to a3 too and leaves;
    // then a3 leaves, and a2, the one agent online, gets both in one
    // frame, b1's with both lines.
    let (_b2, w, _) = t.buyer("b2").await;
    let conv2 = w["conversation"].as_str().unwrap().to_string();
    a1.recv_type("conversation_assigned").await;
    a1.send(json!({"type":"transfer","conversation":conv2,"to":"a3","note":"第二位"}))
        .await;
    a1.recv_type("conversation_transferred").await;
    // (after the buyer's `presence` of the resume)
    a3.recv_until("conversation_assigned").await;
    a1.close().await;
    a3.close().await;
    let moved = a2.recv_until("conversations_assigned").await;
    let b1 = moved["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == json!(conv))
        .expect("b1 moved");
    assert_eq!(transfer_lines(&b1["history"]), both, "{moved}");
    t.stop().await;
}

/// `{buyer}` in a template or a reply is the buyer's id (the platform's
/// nickname), as phrases/README.md promises: it was always dropped (found
/// by review).
#[tokio::test]
async fn buyer_placeholder_is_the_buyers_id() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::fixture_phrases()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let templates = std::fs::read_to_string(dir.path().join("templates.yaml"))
        .unwrap()
        .replace("亲，欢迎光临{shop}！", "{buyer}亲，欢迎光临{shop}！");
    std::fs::write(dir.path().join("templates.yaml"), templates).unwrap();
    let mut config = test_config();
    config.phrases = dir.path().to_path_buf();
    let t = spawn_app_with(config).await;
    let (_agent, _) = t.agent("a1").await;
    let (_buyer, _, greeting) = t.buyer("tb_小明").await;
    assert_eq!(
        greeting["text"],
        "tb_小明亲，欢迎光临测试旗舰店！有什么可以帮您的吗？"
    );
    t.stop().await;
}

/// While the event log is behind (another connection holds its write lock
/// and the queue is more than three quarters full), whoever sends a frame
/// waits before it is taken in, an agent's reply and a buyer's hello as a
/// buyer's message always did; frames for a waiting agent still reach it;
/// once the writer has made room everything goes through and the log has
/// dropped nothing. Why: at 1.4 times the maximum for a minute with 16,000
/// buyers, the agents' replies, which did not wait, filled the queue and
/// 5,068-8,244 events were dropped.
#[tokio::test]
async fn every_frame_waits_while_the_event_log_is_behind() {
    use kefu::events::Event;
    use kefu::store::DB_FILE;

    let dir = tempfile::tempdir().unwrap();
    let store = common::small_log(dir.path());
    let h = store.handle();
    let t = common::spawn_app_with_store(test_config(), h.clone()).await;
    let (mut agent, _) = t.agent("a1").await;
    let (mut buyer, bw, _) = t.buyer("b1").await;
    let conv = bw["conversation"].clone();
    let (other, _, _) = t.buyer("b2").await;
    agent.recv_type("conversation_assigned").await;
    agent.recv_type("conversation_assigned").await;
    let flushed = h.clone();
    tokio::task::spawn_blocking(move || flushed.flush())
        .await
        .unwrap()
        .unwrap();

    // The writer takes one event (a batch) and waits for the lock; the
    // other seven keep the queue of 8 past three quarters whether or not
    // it has taken the first yet.
    let blocker = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let filler = |i: i64| Event::new(1_795_140_000_000 + i, "s1", "cx", "bx", Kind::Buyer);
    for i in 0..=7 {
        h.record(filler(i));
    }
    assert!(h.backlogged());

    agent
        .send(json!({"type":"reply","conversation":conv,"text":"亲，在的，请问有什么可以帮您？"}))
        .await;
    let mut late = t.connect().await;
    late.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b3"}))
        .await;
    // Not taken in while the log is behind.
    let early = tokio::time::timeout(Duration::from_millis(500), buyer.recv()).await;
    assert!(early.is_err(), "the reply went through: {early:?}");
    let early = tokio::time::timeout(Duration::from_millis(200), late.recv()).await;
    assert!(early.is_err(), "the hello went through: {early:?}");
    // A frame for the waiting agent is still written to it.
    other.close().await;
    let p = agent.recv_type("presence").await;
    assert_eq!(p["online"], false);

    blocker.execute_batch("COMMIT").unwrap();
    assert_eq!(buyer.recv_type("reply").await["from"], "agent");
    agent.recv_type("reply_sent").await;
    late.recv_type("welcome").await;
    assert_eq!(h.dropped(), 0, "the log dropped events");
    t.stop().await;
    store.close().unwrap();
}
