//! The matcher's mechanics on a small hand-made library, independent of the
//! wording of the shipped libraries (those are tested in `src/tests.rs`).

use std::sync::Arc;

use kefu::matcher::Matcher;
use kefu::phrases::{Fill, Library};

const LIB: &str = r#"stage: pre_sale
intents:
  - id: pre_sale.greeting
    priority: 0.6
    keywords: [在吗, 你好, 有人吗]
    replies: ["亲，您好！欢迎光临{shop}", "您好，我是{agent}"]
  - id: pre_sale.stock
    keywords: [有货, 还有货吗, 补货]
    exclude: [没货了吧我不要了]
    replies: ["亲，有现货的呢", "亲，这款库存充足"]
  - id: pre_sale.size_advice
    keywords: [多大码, 尺码]
    patterns: ['\d{3}\s*(cm)?\s*\d{2,3}\s*(斤|kg)']
    replies: ["亲，参考尺码表", "亲，您报一下身高体重"]
"#;

const IN_SALE: &str = r#"stage: in_sale
intents:
  - id: in_sale.shipping_time
    keywords: [发货, 什么时候发货, 几天发货]
    replies: ["亲，48小时内发货", "亲，付款后48小时内为您发出"]
  - id: in_sale.invoice
    keywords: [发票, 开发票]
    replies: ["亲，可以开具发票", "亲，发票随货寄出"]
"#;

fn matcher() -> Matcher {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("pre_sale.yaml"), LIB).unwrap();
    std::fs::write(p.join("in_sale.yaml"), IN_SALE).unwrap();
    std::fs::write(
        p.join("templates.yaml"),
        "greeting: [\"欢迎光临{shop}\"]\nholding: [\"请稍等\"]\n",
    )
    .unwrap();
    std::fs::write(p.join("politeness.yaml"), "negative: []\ncurt: []\n").unwrap();
    Matcher::new(&Library::load_dir(p).unwrap()).unwrap()
}

fn top(m: &Matcher, text: &str) -> Option<String> {
    m.rank(text)
        .first()
        .map(|r| m.intent_id(r.intent).to_string())
}

#[test]
fn table() {
    let m = matcher();
    // (message, expected top intent or None)
    let cases: &[(&str, Option<&str>)] = &[
        ("在吗", Some("pre_sale.greeting")),
        ("你好", Some("pre_sale.greeting")),
        // A request glued to a greeting wins over the greeting.
        ("你好，还有货吗", Some("pre_sale.stock")),
        ("你好 什么时候发货", Some("in_sale.shipping_time")),
        // Traditional characters and full-width forms match the same.
        ("還有貨嗎？", Some("pre_sale.stock")),
        ("什麼時候發貨", Some("in_sale.shipping_time")),
        ("你好！！", Some("pre_sale.greeting")),
        ("１７５ ６５ＫＧ", Some("pre_sale.size_advice")),
        // A pattern alone is enough.
        ("175 65kg", Some("pre_sale.size_advice")),
        ("身高170cm 120斤", Some("pre_sale.size_advice")),
        // An exclusion vetoes its intent.
        ("没货了吧我不要了", None),
        // Nothing meaningful: no suggestion rather than a wrong one.
        ("123456789", None),
        ("", None),
        ("   ", None),
        ("？？？", None),
        // `发票` is not `发货`: overlapping keywords of different intents.
        ("能开发票吗", Some("in_sale.invoice")),
    ];
    for (text, want) in cases {
        assert_eq!(top(&m, text).as_deref(), *want, "message {text:?}");
    }
}

#[test]
fn scores_are_ranked_and_bounded() {
    let m = matcher();
    let ranked = m.rank("你好，还有货吗，什么时候发货");
    assert!(ranked.len() >= 2, "{ranked:?}");
    for w in ranked.windows(2) {
        assert!(w[0].score >= w[1].score);
    }
    assert!(ranked.iter().all(|r| r.score > 0.0 && r.score <= 1.0));
}

#[test]
fn a_longer_keyword_hides_the_one_inside_it() {
    let m = matcher();
    let s = m.suggest("什么时候发货", 3, &Fill::default());
    assert_eq!(&*s[0].intent, "in_sale.shipping_time");
    assert_eq!(s[0].matched, vec![Arc::from("什么时候发货")]);
}

#[test]
fn suggestions_fill_placeholders_and_respect_top() {
    let m = matcher();
    let fill = Fill {
        shop: "小米旗舰店",
        agent: "小美",
        buyer: "",
    };
    let s = m.suggest("在吗", 3, &fill);
    assert_eq!(s.len(), 1);
    assert!(
        &*s[0].reply == "亲，您好！欢迎光临小米旗舰店" || &*s[0].reply == "您好，我是小美",
        "{}",
        s[0].reply
    );
    assert_eq!(s[0].matched, vec![Arc::from("在吗")]);
    // Same message, same reply variant.
    assert_eq!(m.suggest("在吗", 3, &fill), s);
    assert_eq!(m.suggest("你好，还有货吗，什么时候发货", 1, &fill).len(), 1);
}
