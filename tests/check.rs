//! Loader errors: every kind of problem is reported with file, line and
//! column, all of them in one pass, and `kefu check` exits non-zero.

use std::path::{Path, PathBuf};
use std::process::Command;

use kefu::phrases::{Library, LoadedDir, Problem, ProblemKind, Stage};

const TEMPLATES: &str = "greeting:\n  - \"亲，欢迎光临{shop}\"\nholding:\n  - \"亲，请您稍等\"\n";
const POLITENESS: &str = "negative:\n  - phrase: 不行\n    rewrite: 我们一起想想办法\ncurt:\n  - phrase: 好的\n    rewrite: 好的呢亲，已为您记下啦\n";

const GOOD: &str = r#"stage: pre_sale
intents:
  - id: pre_sale.greeting
    keywords: [在吗, 你好]
    replies:
      - "亲，您好！欢迎光临{shop}"
      - "您好呀，我是{agent}，很高兴为您服务"
"#;

/// A phrase directory in a temp dir with the two special files and `libs`.
fn dir_with(libs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("templates.yaml"), TEMPLATES).unwrap();
    std::fs::write(dir.path().join("politeness.yaml"), POLITENESS).unwrap();
    for (name, text) in libs {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn problems(dir: &Path) -> Vec<Problem> {
    match Library::load_dir(dir) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

#[test]
fn a_good_directory_loads() {
    let dir = dir_with(&[("pre_sale.yaml", GOOD)]);
    let lib = Library::load_dir(dir.path()).expect("good library loads");
    assert_eq!(lib.intents.len(), 1);
    assert_eq!(lib.templates.greeting.len(), 1);
}

/// A reply may name the messages it fits (`when:`); cue words are kept as
/// written, and a plain reply is general.
#[test]
fn replies_with_cues_load() {
    let text = "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [包邮]\n    replies:\n      - 亲，您好\n      - text: 亲，包邮的\n        when: [包邮, \"#kg\"]\n      - {text: 亲，运费, when: [運費]}\n";
    let dir = dir_with(&[("pre_sale.yaml", text)]);
    let lib = Library::load_dir(dir.path()).expect("cued replies load");
    let replies = &lib.intents[0].replies;
    assert_eq!(replies.len(), 3);
    assert!(replies[0].is_general());
    assert_eq!(replies[1].when, ["包邮", "#kg"]);
    assert_eq!(replies[2].text, "亲，运费");
    assert_eq!(replies[2].when, ["運費"]);
}

/// Each case: a library text, the expected problem (matched by a predicate
/// on its kind), its line and column.
#[test]
fn every_error_kind_has_file_line_and_column() {
    type Pred = fn(&ProblemKind) -> bool;
    let cases: &[(&str, &str, Pred, usize, usize)] = &[
        (
            "yaml syntax: bad indentation",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [a\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::Syntax(_)),
            5,
            12,
        ),
        (
            "unknown field",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keyword: [在吗]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::Syntax(m) if m.contains("keyword")),
            4,
            5,
        ),
        (
            // "data did not match any variant of untagged enum RawKeyword"
            // before, then "expected a keyword" at the list's first entry.
            "keyword of the wrong shape",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - {txt: 在吗}\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::Syntax(m) if m.contains("unknown field `txt`, expected `text` or `weight`")),
            5,
            10,
        ),
        (
            "a typo in a weighted keyword further down the list",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - 在吗\n      - 你好\n      - {text: 咨询订单, wieght: 0.5}\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::Syntax(m) if m.contains("keywords[2]: unknown field `wieght`")),
            7,
            22,
        ),
        (
            "a pattern with an upper-case letter never matches",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [重量]\n    patterns: ['[0-9]+KG重量', '\\d+kg', '[A-Za-z]+\\D']\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::UpperCasePattern { pattern, letter: 'K', .. } if pattern == "[0-9]+KG重量"),
            5,
            17,
        ),
        (
            "an unquoted number as a keyword",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - 在吗\n      - 618\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::Syntax(m) if m.contains("`618` is read as a number or true/false, not as text: write it in quotes (\"618\")")),
            6,
            9,
        ),
        (
            "a priority of 0 silences the intent",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    priority: 0\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadPriority { id, priority } if id == "pre_sale.a" && priority == "0"),
            5,
            5,
        ),
        (
            "a huge priority wins over every other intent",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies: [x, y]\n    priority: 1e30\n",
            |k| matches!(k, ProblemKind::BadPriority { .. }),
            6,
            5,
        ),
        (
            "a priority that is not a number",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    priority: .nan\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadPriority { priority, .. } if priority == "NaN"),
            5,
            5,
        ),
        (
            "unknown stage",
            "stage: during_sale\nintents: []\n",
            |k| matches!(k, ProblemKind::UnknownStage(s) if s == "during_sale"),
            1,
            1,
        ),
        (
            "id of another stage",
            "stage: pre_sale\nintents:\n  - id: in_sale.a\n    keywords: [在吗]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::IdStageMismatch { .. }),
            3,
            9,
        ),
        (
            "duplicate id",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies: [x, y]\n  - id: pre_sale.a\n    keywords: [你好]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::DuplicateId { id, .. } if id == "pre_sale.a"),
            6,
            9,
        ),
        (
            "no keywords and no patterns",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: []\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::NoKeywords(_)),
            4,
            5,
        ),
        (
            "empty keyword, at its own place in a flow list",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗, \"\"]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what: "keyword", .. }),
            4,
            20,
        ),
        (
            // Reported at the `keywords:` line (4) before.
            "empty keyword, on its own line of a block list",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - 在吗\n      - 你好\n      - \"\"\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what: "keyword", .. }),
            7,
            9,
        ),
        (
            "blank weighted keyword",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - 在吗\n      - {text: ' ', weight: 0.5}\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what: "keyword", .. }),
            6,
            16,
        ),
        (
            "empty exclusion",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    exclude:\n      - 不在\n      - ''\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what: "exclusion", .. }),
            7,
            9,
        ),
        (
            "empty pattern",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    patterns:\n      - '在.?吗'\n      - \"\"\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what: "pattern", .. }),
            7,
            9,
        ),
        (
            "invalid regex",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    patterns: ['(在吗']\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::InvalidRegex { .. }),
            5,
            17,
        ),
        (
            "reply without text",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies: [x, y, \"  \"]\n",
            |k| matches!(k, ProblemKind::EmptyReply(_)),
            5,
            5,
        ),
        (
            "only one reply",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies: [x]\n",
            |k| matches!(k, ProblemKind::TooFewReplies { count: 1, .. }),
            5,
            5,
        ),
        (
            "unknown placeholder",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies:\n      - \"欢迎光临{shopname}\"\n      - y\n",
            |k| matches!(k, ProblemKind::UnknownPlaceholder { placeholder } if placeholder == "shopname"),
            6,
            14,
        ),
        (
            "keyword weight out of range",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [{text: 在吗, weight: 3}]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadWeight { .. }),
            4,
            23,
        ),
        (
            // 在不 is a prefix of 在不在 on the line above: reported at line
            // 5 before.
            "bad weight of a keyword that begins an earlier one",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords:\n      - {text: 在不在, weight: 0.9}\n      - {text: 在不, weight: 7}\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadWeight { keyword, .. } if keyword == "在不"),
            6,
            16,
        ),
        (
            "bad weight of a keyword also in the description and a longer keyword",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    description: 在吗 and 在吗呀\n    keywords:\n      - 在吗呀\n      - text: 在吗\n        weight: -1\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadWeight { keyword, .. } if keyword == "在吗"),
            7,
            15,
        ),
        (
            "bad weight of a quoted keyword after the same text in an exclusion",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    exclude: [发货]\n    keywords: [发货地, {text: \"发货\", weight: 2}]\n    replies: [x, y]\n",
            |k| matches!(k, ProblemKind::BadWeight { keyword, .. } if keyword == "发货"),
            5,
            29,
        ),
        (
            "every reply has cues: no general reply",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [包邮]\n    replies:\n      - {text: x, when: [包邮]}\n      - {text: y, when: [运费]}\n",
            |k| matches!(k, ProblemKind::NoGeneralReply(id) if id == "pre_sale.a"),
            5,
            5,
        ),
        (
            "a reply with an empty when",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [包邮]\n    replies:\n      - x\n      - text: y\n        when: [包邮]\n      - text: z\n        when: []\n",
            |k| matches!(k, ProblemKind::NoCues(id) if id == "pre_sale.a"),
            10,
            15,
        ),
        (
            "a blank cue word",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [包邮]\n    replies:\n      - x\n      - text: y\n        when: [包邮]\n      - text: z\n        when: [运费, \"  \"]\n",
            |k| matches!(k, ProblemKind::EmptyKeyword { what, .. } if what.contains("when")),
            10,
            20,
        ),
        (
            // The parser points at the list of replies, and the message
            // says what a reply looks like.
            "a misspelt key in a reply",
            "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [包邮]\n    replies:\n      - x\n      - {text: y, wen: [包邮]}\n",
            // At the list's first entry, the typo not named, before.
            |k| matches!(k, ProblemKind::Syntax(m) if m.contains("replies[1]: unknown field `wen`, expected `text` or `when`")),
            7,
            19,
        ),
    ];
    for (what, text, pred, line, column) in cases {
        let dir = dir_with(&[("pre_sale.yaml", text)]);
        let found = problems(dir.path());
        let p = found
            .iter()
            .find(|p| pred(&p.kind))
            .unwrap_or_else(|| panic!("{what}: expected problem not reported; got {found:#?}"));
        assert_eq!(
            p.file,
            dir.path().join("pre_sale.yaml"),
            "{what}: wrong file"
        );
        assert_eq!((p.line, p.column), (*line, *column), "{what}: {p}");
        // The rendered message names the file and the position.
        let shown = p.to_string();
        assert!(
            shown.contains(&format!("pre_sale.yaml:{line}:{column}: ")),
            "{what}: {shown}"
        );
    }
}

/// A politeness file with no rule is refused (an emptied file turned the
/// check off, and a reload that took it replaced the last good copy), and
/// so is a phrase whose slots multiply past what the check takes (one of
/// eleven nine-word slots ran the service out of memory at a reload);
/// each at its place in the file.
#[test]
fn politeness_without_rules_or_with_a_runaway_phrase_is_refused() {
    let nine = "我: [我, 我们, 我这边, 我们这边, 我这里, 我们这里, 咱们, 咱们这边, 咱这边]";
    let runaway = format!(
        "slots:\n  {nine}\nnegative:\n  - phrase: \"{}不能\"\n    rewrite: 我们一起想想办法\n",
        "{我}".repeat(11)
    );
    let fine = format!(
        "slots:\n  {nine}\nnegative:\n  - phrase: \"{{我}}不能\"\n    rewrite: 我们一起想想办法\n"
    );
    type Pred = fn(&ProblemKind) -> bool;
    type Want = Option<(Pred, usize, usize)>;
    let cases: Vec<(&str, String, Want)> = vec![
        (
            "empty",
            String::new(),
            Some((|k| matches!(k, ProblemKind::NoPolitenessRules), 1, 1)),
        ),
        (
            "comments only",
            "# rules go here\n".into(),
            Some((|k| matches!(k, ProblemKind::NoPolitenessRules), 1, 1)),
        ),
        (
            "slots only",
            format!("slots:\n  {nine}\n"),
            Some((|k| matches!(k, ProblemKind::NoPolitenessRules), 1, 1)),
        ),
        (
            "eleven slots",
            runaway,
            Some((
                |k| matches!(k, ProblemKind::TooManyExpansions { count, .. } if *count == 9u64.pow(11)),
                4,
                14,
            )),
        ),
        ("one slot", fine, None),
        (
            "the check turned off on purpose",
            "negative: []\ncurt: []\n".into(),
            None,
        ),
    ];
    for (what, text, want) in cases {
        let dir = dir_with(&[("pre_sale.yaml", GOOD)]);
        std::fs::write(dir.path().join("politeness.yaml"), &text).unwrap();
        let found = problems(dir.path());
        match want {
            None => assert!(found.is_empty(), "{what}: {found:#?}"),
            Some((pred, line, column)) => {
                let p = found
                    .iter()
                    .find(|p| pred(&p.kind))
                    .unwrap_or_else(|| panic!("{what}: not reported; got {found:#?}"));
                assert_eq!(p.file, dir.path().join("politeness.yaml"), "{what}");
                assert_eq!((p.line, p.column), (line, column), "{what}: {p}");
            }
        }
    }
}

/// An empty politeness phrase is reported at its own rule, as a rule of
/// `negative` or `curt` (it was reported at the file's first `phrase:` line
/// as "intent `politeness` has an empty keyword", an intent that does not
/// exist).
#[test]
fn empty_politeness_phrases_are_reported_at_their_rule() {
    let cases: &[(&str, &str, &str, usize, usize, usize)] = &[
        (
            "second negative rule",
            "negative:\n  - phrase: 不行\n    rewrite: 我们一起想想办法\n  - phrase: \"\"\n    rewrite: 好的\ncurt:\n  - phrase: 好的\n    rewrite: 好的呢亲\n",
            "negative",
            2,
            4,
            13,
        ),
        (
            "first curt rule, after negative rules",
            "negative:\n  - phrase: 不行\n    rewrite: 我们一起想想办法\ncurt:\n  - rewrite: 好的呢亲\n    phrase: ' '\n",
            "curt",
            1,
            6,
            13,
        ),
        (
            "flow style",
            "negative:\n  - {phrase: 不行, rewrite: 想想办法}\n  - {phrase: '', rewrite: 好的}\n",
            "negative",
            2,
            3,
            14,
        ),
    ];
    for (what, text, list, rule, line, column) in cases {
        let dir = dir_with(&[("pre_sale.yaml", GOOD)]);
        std::fs::write(dir.path().join("politeness.yaml"), text).unwrap();
        let found = problems(dir.path());
        assert_eq!(found.len(), 1, "{what}: {found:#?}");
        let p = &found[0];
        assert_eq!(
            p.kind,
            ProblemKind::EmptyRulePhrase { list, rule: *rule },
            "{what}"
        );
        assert_eq!((p.line, p.column), (*line, *column), "{what}: {p}");
        let shown = p.to_string();
        assert!(
            shown.contains(&format!(
                "politeness.yaml:{line}:{column}: politeness rule {rule} of `{list}` has an empty phrase"
            )),
            "{what}: {shown}"
        );
        assert!(!shown.contains("intent"), "{what}: {shown}");
    }
}

#[test]
fn a_missing_directory_is_called_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let found = problems(&missing);
    assert_eq!(found.len(), 1, "{found:#?}");
    let shown = found[0].to_string();
    assert!(
        shown.contains("cannot read the phrase directory"),
        "{shown}"
    );
    assert!(!shown.contains("cannot read file"), "{shown}");
}

#[test]
fn all_problems_are_reported_in_one_pass() {
    let bad_a = "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    patterns: ['[']\n    replies: [x]\n";
    let bad_b =
        "stage: in_sale\nintents:\n  - id: in_sale.b\n    keywords: []\n    replies: [x, y]\n";
    let dir = dir_with(&[("pre_sale.yaml", bad_a), ("in_sale.yaml", bad_b)]);
    let found = problems(dir.path());
    assert!(found.len() >= 3, "{found:#?}");
    assert!(found.iter().any(|p| p.file.ends_with("pre_sale.yaml")));
    assert!(found.iter().any(|p| p.file.ends_with("in_sale.yaml")));
}

#[test]
fn duplicate_ids_across_files() {
    let dir = dir_with(&[("pre_sale.yaml", GOOD), ("pre_sale_extra.yaml", GOOD)]);
    let found = problems(dir.path());
    let p = found
        .iter()
        .find(|p| matches!(p.kind, ProblemKind::DuplicateId { .. }))
        .expect("duplicate across files reported");
    assert!(p.file.ends_with("pre_sale_extra.yaml"));
    assert!(p.to_string().contains("pre_sale.yaml:3"), "{p}");
}

#[test]
fn broken_templates_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pre_sale.yaml"), GOOD).unwrap();
    std::fs::write(
        dir.path().join("templates.yaml"),
        "greeting:\n  - \"欢迎光临{shop\"\nholding: [\"请稍等\"]\n",
    )
    .unwrap();
    let found = problems(dir.path());
    let unclosed = found
        .iter()
        .find(|p| matches!(p.kind, ProblemKind::UnclosedPlaceholder))
        .expect("unclosed placeholder reported");
    assert_eq!((unclosed.line, unclosed.column), (2, 10));
    assert!(found
        .iter()
        .any(|p| p.kind == ProblemKind::MissingFile("politeness.yaml")));
}

/// A blank entry in any template list is reported where it is written:
/// the bot would send it as an empty line.
#[test]
fn blank_template_entries_are_reported_where_they_are() {
    let cases: &[(&str, &str, (usize, usize))] = &[
        // (templates.yaml, the list, line and column)
        (
            "greeting: [\"欢迎光临{shop}\"]\nholding: [\"请稍等\"]\ntransfer:\n  - \"   \"\n",
            "transfer",
            (4, 5),
        ),
        (
            "greeting: [\"欢迎光临{shop}\"]\nholding:\n  - \"请稍等\"\n  - \"\"\n",
            "holding",
            (4, 5),
        ),
        (
            "greeting: [\"欢迎光临{shop}\"]\nholding: [\"请稍等\"]\noffline: [\"亲，稍后回复您\", \"\"]\n",
            "offline",
            (3, 22),
        ),
    ];
    for (yaml, key, at) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pre_sale.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("templates.yaml"), yaml).unwrap();
        let found = problems(dir.path());
        let p = found
            .iter()
            .find(|p| p.kind == ProblemKind::EmptyTemplate(key))
            .unwrap_or_else(|| panic!("{key}: not reported in {found:?}"));
        assert_eq!((p.line, p.column), *at, "{key}: {p}");
    }
}

/// A file that is not UTF-8 is reported at its first bad byte, not at 1:1
/// (columns count characters, as everywhere else). Each case: the file's
/// bytes, the line and column, the byte named.
#[test]
fn invalid_utf8_is_reported_where_it_is() {
    let gbk_greeting = [0xD4, 0xDA, 0xC2, 0xF0]; // 在吗 in GBK
    let mut gbk = b"stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [".to_vec();
    gbk.extend(gbk_greeting);
    gbk.extend(b"]\n    replies: [x, y]\n");
    let mut after_chinese = "stage: pre_sale\n# 售前话术".as_bytes().to_vec();
    after_chinese.push(0xFF);
    let mut cut = "stage: pre_sale\n# 售".as_bytes().to_vec();
    cut.extend(&"前".as_bytes()[..2]); // a character cut short at the end
    let cases: [(&str, Vec<u8>, usize, usize, u8); 4] = [
        ("first byte", b"\xFFstage: pre_sale\n".to_vec(), 1, 1, 0xFF),
        ("a GBK keyword", gbk, 4, 16, 0xD4),
        ("after Chinese text", after_chinese, 2, 7, 0xFF),
        ("cut at the end", cut, 2, 4, 0xE5),
    ];
    for (what, bytes, line, column, byte) in cases {
        let dir = dir_with(&[]);
        std::fs::write(dir.path().join("pre_sale.yaml"), &bytes).unwrap();
        let found = problems(dir.path());
        let p = found
            .iter()
            .find(|p| p.file.ends_with("pre_sale.yaml"))
            .unwrap_or_else(|| panic!("{what}: not reported in {found:?}"));
        assert_eq!(p.kind, ProblemKind::NotUtf8 { byte }, "{what}");
        assert_eq!((p.line, p.column), (line, column), "{what}: {p}");
        assert!(p.to_string().contains("save it with UTF-8"), "{what}: {p}");
    }
}

const IN_SALE: &str = r#"stage: in_sale
intents:
  - id: in_sale.ship
    keywords: [发货]
    replies: [x, y]
"#;

/// What a reload would lose of the libraries in force
/// ([`LoadedDir::losses`]). Each case: the edit made to a directory of
/// `pre_sale.yaml` (one intent) and `in_sale.yaml`, and the problems
/// expected (file, kind); none for an edit that keeps every stage file.
#[test]
fn losses_of_a_reload() {
    type Edit = fn(&Path);
    type Want<'a> = Vec<(&'a str, ProblemKind)>;
    let gone = |stage| ProblemKind::LibraryFileGone { stage, intents: 1 };
    let cases: [(&str, Edit, Want); 7] = [
        ("nothing changed", |_| {}, vec![]),
        (
            "an intent added",
            |d| {
                let more =
                    format!("{GOOD}  - id: pre_sale.b\n    keywords: [b]\n    replies: [x, y]\n");
                std::fs::write(d.join("pre_sale.yaml"), more).unwrap();
            },
            vec![],
        ),
        (
            "a new stage file",
            |d| {
                std::fs::write(
                    d.join("after_sale.yaml"),
                    "stage: after_sale\nintents: []\n",
                )
                .unwrap()
            },
            vec![],
        ),
        (
            "a stage file deleted",
            |d| std::fs::remove_file(d.join("pre_sale.yaml")).unwrap(),
            vec![("pre_sale.yaml", gone(Stage::PreSale))],
        ),
        (
            "a stage file renamed (a restart removes or renames on purpose)",
            |d| std::fs::rename(d.join("in_sale.yaml"), d.join("in_sale_2.yaml")).unwrap(),
            vec![("in_sale.yaml", gone(Stage::InSale))],
        ),
        (
            "a stage emptied in its file",
            |d| std::fs::write(d.join("pre_sale.yaml"), "stage: pre_sale\nintents: []\n").unwrap(),
            vec![(
                "pre_sale.yaml",
                ProblemKind::StageEmptied {
                    stage: Stage::PreSale,
                    intents: 1,
                },
            )],
        ),
        (
            "both stage files deleted",
            |d| {
                std::fs::remove_file(d.join("pre_sale.yaml")).unwrap();
                std::fs::remove_file(d.join("in_sale.yaml")).unwrap();
                std::fs::write(d.join("after_sale.yaml"), AFTER_SALE).unwrap();
            },
            vec![
                ("in_sale.yaml", gone(Stage::InSale)),
                ("pre_sale.yaml", gone(Stage::PreSale)),
            ],
        ),
    ];
    for (what, edit, want) in cases {
        let dir = dir_with(&[("pre_sale.yaml", GOOD), ("in_sale.yaml", IN_SALE)]);
        let before = LoadedDir::load(dir.path()).expect("loads");
        edit(dir.path());
        let after = LoadedDir::load(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got: Vec<(PathBuf, ProblemKind)> = after
            .losses(&before.files, dir.path())
            .into_iter()
            .map(|p| (p.file, p.kind))
            .collect();
        let want: Vec<(PathBuf, ProblemKind)> = want
            .into_iter()
            .map(|(f, k)| (dir.path().join(f), k))
            .collect();
        assert_eq!(got, want, "{what}");
    }
}

const AFTER_SALE: &str = r#"stage: after_sale
intents:
  - id: after_sale.refund
    keywords: [退款]
    replies: [x, y]
"#;

/// `kefu` without any `KEFU_*` variable of the test's environment.
fn kefu() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEFU_")) {
        cmd.env_remove(k);
    }
    cmd
}

fn shipped_phrases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases")
}

#[test]
fn kefu_check_exit_codes() {
    let out = kefu().arg("check").arg(shipped_phrases()).output().unwrap();
    assert!(
        out.status.success(),
        "shipped libraries must be clean: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = dir_with(&[(
        "pre_sale.yaml",
        "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    patterns: ['(']\n    replies: [x, y]\n",
    )]);
    let out = kefu().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pre_sale.yaml:5:17: "), "{err}");
    assert!(err.contains("invalid regex"), "{err}");
}

/// A library that loads but lacks ids of the project's taxonomy fails
/// `kefu check`, naming each missing id and the file it belongs in; with
/// the shipped libraries less one intent, only that one is named.
#[test]
fn kefu_check_names_the_required_intents_a_library_lacks() {
    let small = dir_with(&[(
        "pre_sale.yaml",
        "stage: pre_sale\nintents:\n  - id: pre_sale.greeting\n    keywords: [在吗]\n    replies: [亲，在的~, 您好亲，请问有什么可以帮您？]\n",
    )]);
    let lib = Library::load_dir(small.path()).expect("loads");
    let missing = lib.missing_required();
    assert_eq!(missing.len(), kefu::phrases::REQUIRED_INTENTS.len() - 1);
    assert!(!missing.contains(&"pre_sale.greeting"));
    let out = kefu().arg("check").arg(small.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing required intent `after_sale.refund`")
            && err.contains("add it to the library with `stage: after_sale`"),
        "{err}"
    );
    assert!(!err.contains("`pre_sale.greeting`"), "{err}");
    assert!(err.contains("28 problem(s) found"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "no `ok` line: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The shipped libraries with one required intent taken out.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped_phrases()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            if path.ends_with("in_sale.yaml") {
                text = text.replace("id: in_sale.invoice", "id: in_sale.invoice_and_receipt");
            }
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
    }
    let out = kefu().arg("check").arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing required intent `in_sale.invoice`"),
        "{err}"
    );
    assert!(err.contains("1 problem(s) found"), "{err}");
}

/// `kefu check` takes the directory as every other command does
/// (`--phrases DIR`, `KEFU_PHRASES`); the positional DIR still works and
/// wins over the variable. Before, `--phrases` was refused and the
/// variable ignored.
#[test]
fn kefu_check_takes_phrases_and_kefu_phrases() {
    let good = shipped_phrases();
    let good = good.to_str().unwrap();
    let broken = dir_with(&[(
        "pre_sale.yaml",
        "stage: pre_sale\nintents:\n  - id: pre_sale.a\n    keywords: [在吗]\n    replies: [x]\n",
    )]);
    let broken = broken.path().to_str().unwrap();
    // (args, KEFU_PHRASES, exit code, the directory named in the output)
    let cases: [(&[&str], Option<&str>, i32, &str); 6] = [
        (&["check", "--phrases", good], None, 0, good),
        (&["check", "--phrases", broken], None, 1, broken),
        (&["check"], Some(broken), 1, broken),
        (&["check", good], Some(broken), 0, good),
        (&["check", good, "--phrases", good], None, 0, good),
        (
            &["check", good, "--phrases", broken],
            None,
            2,
            "name different directories",
        ),
    ];
    for (args, env, code, says) in cases {
        let mut cmd = kefu();
        cmd.args(args);
        if let Some(dir) = env {
            cmd.env("KEFU_PHRASES", dir);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?} {env:?}: {text}");
        assert!(text.contains(says), "{args:?} {env:?}: {text}");
    }
}

/// Every greeting names the shop: `kefu check` passed one without
/// `{shop}` (found by review), so a buyer would be greeted without it.
#[test]
fn a_greeting_without_the_shop_is_reported_where_it_is() {
    let cases: &[(&str, Option<(usize, usize)>)] = &[
        ("greeting: [\"亲，欢迎光临{shop}！\"]\nholding: [\"请稍等\"]\n", None),
        (
            "greeting:\n  - \"亲，欢迎光临{shop}！\"\n  - \"亲，您好！我是客服{agent}，请问有什么可以帮您的呢？\"\nholding: [\"请稍等\"]\n",
            Some((3, 6)),
        ),
        ("greeting: [\"您好\"]\nholding: [\"请稍等\"]\n", Some((1, 13))),
    ];
    for (yaml, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pre_sale.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("templates.yaml"), yaml).unwrap();
        let found = problems(dir.path());
        let got = found
            .iter()
            .find(|p| p.kind == ProblemKind::GreetingWithoutShop)
            .map(|p| (p.line, p.column));
        assert_eq!(got, *want, "{yaml}: {found:?}");
    }
}

/// A politeness phrase that names a slot `slots:` does not define is
/// reported where it is written: it would be matched literally, and never.
#[test]
fn an_unknown_politeness_slot_is_reported_where_it_is() {
    /// politeness.yaml; the phrase reported, its line and column.
    type Case<'a> = (&'a str, Option<(&'a str, usize, usize)>);
    let cases: &[Case] = &[
        (
            "slots:\n  我: [我, 我们]\nnegative:\n  - phrase: \"{我}不能\"\n    rewrite: 我们一起想想办法\n",
            None,
        ),
        (
            "slots:\n  我: [我, 我们]\nnegative:\n  - phrase: \"{俺}不能\"\n    rewrite: 我们一起想想办法\n",
            Some(("{俺}不能", 4, 14)),
        ),
    ];
    for (yaml, want) in cases {
        let dir = dir_with(&[("pre_sale.yaml", GOOD)]);
        std::fs::write(dir.path().join("politeness.yaml"), yaml).unwrap();
        let found = problems(dir.path());
        let got = found.iter().find_map(|p| match &p.kind {
            ProblemKind::UnknownSlot { phrase } => Some((phrase.as_str(), p.line, p.column)),
            _ => None,
        });
        assert_eq!(got, *want, "{yaml}: {found:?}");
    }
}
