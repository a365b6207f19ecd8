//! docs/PROTOCOL.md stays true: its client examples parse as the server
//! parses them, and every server example is a JSON object of a known type.

use std::path::Path;

const SERVER_TYPES: &[&str] = &[
    "welcome",
    "reply",
    "rated",
    "conversation_assigned",
    "conversations_assigned",
    "conversation_transferred",
    "colleague",
    "buyer_message",
    "nudge",
    "breach",
    "reply_sent",
    "bot_reply",
    "presence",
    "conversation_closed",
    "lint_result",
    "reload",
    "error",
];

#[test]
fn protocol_examples_are_valid() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md"))
            .unwrap();
    let mut section = String::new();
    let mut in_json = false;
    let mut block = String::new();
    let (mut client, mut server) = (0, 0);
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.to_string();
        }
        if line == "```json" {
            in_json = true;
            block.clear();
            continue;
        }
        if in_json && line == "```" {
            in_json = false;
            let v: serde_json::Value =
                serde_json::from_str(&block).unwrap_or_else(|e| panic!("{e}: {block}"));
            if section.starts_with("Client") {
                kefu::protocol::parse(&block).unwrap_or_else(|e| panic!("{e:?}: {block}"));
                client += 1;
            } else {
                let ty = v["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no type: {block}"));
                assert!(SERVER_TYPES.contains(&ty), "unknown server type {ty}");
                server += 1;
            }
            continue;
        }
        if in_json {
            block.push_str(line);
        }
    }
    assert!(
        client >= 8 && server >= 21,
        "examples found: {client} client, {server} server"
    );
}

/// The `lint_result` example is what the server sends for its draft with the
/// shipped rules (it once showed a phrase and rewrite no rule had).
#[test]
fn lint_result_example_is_real_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/PROTOCOL.md")).unwrap();
    let lib = kefu::phrases::Library::load_dir(&root.join("phrases")).unwrap();
    let text = "不能退";
    let lint = kefu::politeness::Checker::new(&lib.politeness).check(text);
    let sent = kefu::protocol::to_json(&kefu::protocol::ServerMsg::LintResult {
        text,
        ok: lint.ok,
        issues: &lint.issues,
    });
    assert!(
        doc.contains(&format!("```json\n{sent}\n```")),
        "docs/PROTOCOL.md should show:\n{sent}"
    );
}
