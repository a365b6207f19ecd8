//! Text normalisation shared by keywords, patterns and buyer messages.
//!
//! Buyers type on phones with full-width punctuation, mixed case, stray
//! spaces, and (from Taiwan and Hong Kong) traditional characters. Keywords
//! in the libraries are written once in simplified Chinese, so both sides go
//! through [`normalize`] before matching: whatever a buyer types, `請問什麼時候發貨`
//! and `请问什么时候发货` reach the matcher as the same string.

/// Normalises `text` for matching.
///
/// - full-width ASCII forms (`ＡＢＣ１２３！`) become half-width, the
///   ideographic space becomes a plain space;
/// - ASCII letters are lower-cased;
/// - runs of white space collapse to one space, leading and trailing
///   white space is dropped;
/// - traditional Chinese characters become simplified ones (via `fast2s`,
///   which picks the right character from its neighbours where one
///   traditional form maps to several simplified ones).
///
/// The output is never longer in characters than the input, so offsets in
/// it can be reported back as "character n of the message".
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut traditional = false;
    for c in text.chars() {
        let c = fold_char(c);
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        traditional |= is_traditional(c);
        out.push(c);
    }
    if traditional {
        // `fast2s` costs three hash look-ups per 3-byte character; most
        // messages are in simplified characters already and skip it.
        fast2s::replace(&mut out);
        // 甚麼 is a traditional spelling of 什么 that fast2s leaves as 甚么
        // (甚 is also simplified); same length, so offsets stay.
        if out.contains("甚么") {
            out = out.replace("甚么", "什么");
        }
    }
    out
}

/// Whether `fast2s` may change `c`: a character it maps on its own, or
/// one of its context-dependent cases.
fn is_traditional(c: char) -> bool {
    let cp = c as u32;
    if !(0x800..=0xFFFF).contains(&cp) {
        return false;
    }
    let table = TRADITIONAL.get_or_init(|| {
        // Every 3-byte character through `fast2s` once (a few milliseconds,
        // on the first message or the first library load).
        let mut bits = vec![0u64; 0x10000 / 64];
        let mut buf = [0u8; 4];
        for cp in 0x800u32..=0xFFFF {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = c.encode_utf8(&mut buf);
            if fast2s::convert(s) != *s {
                bits[cp as usize / 64] |= 1 << (cp % 64);
            }
        }
        // Characters `fast2s` converts only next to certain neighbours, or
        // leaves alone next to certain neighbours.
        for c in "藉著苧闔鍾讎畫兒覆夥瞭麽幺於乾".chars() {
            bits[c as usize / 64] |= 1 << (c as u32 % 64);
        }
        bits
    });
    table[cp as usize / 64] & (1 << (cp % 64)) != 0
}

static TRADITIONAL: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

/// Width and case folding of one character.
fn fold_char(c: char) -> char {
    match c {
        '\u{3000}' => ' ',
        '\u{FF01}'..='\u{FF5E}' => {
            let half = char::from_u32(c as u32 - 0xFEE0).unwrap_or(c);
            half.to_ascii_lowercase()
        }
        _ => c.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("你好", "你好"),
            ("  在吗   亲 ", "在吗 亲"),
            ("ＩＰＨＯＮＥ１５還有貨嗎？", "iphone15还有货吗?"),
            ("請問什麼時候發貨", "请问什么时候发货"),
            ("退貨　退款", "退货 退款"),
            ("發票抬頭", "发票抬头"),
            ("Hello\tWORLD\n", "hello world"),
            ("尺碼偏大還是偏小", "尺码偏大还是偏小"),
            // context-dependent forms still go through fast2s
            ("企畫書", "企划书"),
            ("乾隆", "乾隆"),
            ("看著", "看着"),
            ("甚麼時候到", "什么时候到"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), *want, "normalize({input:?})");
        }
    }

    /// The pre-check must never skip a string fast2s would change: over
    /// every 3-byte character, alone and between neighbours.
    #[test]
    fn the_pre_check_misses_no_traditional_character() {
        let mut buf = [0u8; 4];
        for cp in 0x800u32..=0xFFFF {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let alone = c.encode_utf8(&mut buf).to_string();
            for s in [alone.clone(), format!("我{alone}了")] {
                if fast2s::convert(&s) != s {
                    assert!(super::is_traditional(c), "{c:?} (U+{cp:04X}) not flagged");
                }
            }
        }
    }

    /// The workbench maps the server's offsets back onto the raw draft by
    /// replaying `normalize`'s white-space rule (`RUST_WS` in
    /// web/workbench.js); JS's `\s` differs (U+FEFF, U+0085), so the page's
    /// class must be exactly Rust's `char::is_whitespace`.
    #[test]
    fn the_workbench_white_space_is_rusts() {
        let js = include_str!("../web/workbench.js");
        let class = js
            .lines()
            .find_map(|l| l.trim().strip_prefix("const RUST_WS = /^["))
            .and_then(|l| l.strip_suffix("]$/;"))
            .expect("web/workbench.js defines RUST_WS");
        let mut chars = Vec::new();
        let mut it = class.chars().peekable();
        while let Some(c) = it.next() {
            let c = if c == '\\' {
                match it.next() {
                    Some('t') => '\t',
                    Some('n') => '\n',
                    Some('v') => '\u{b}',
                    Some('f') => '\u{c}',
                    Some('r') => '\r',
                    Some('u') => {
                        let hex: String = it.by_ref().take(4).collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
                    }
                    other => panic!("unexpected escape {other:?} in RUST_WS"),
                }
            } else {
                c
            };
            chars.push(c);
        }
        let mut set = std::collections::BTreeSet::new();
        let mut i = 0;
        while i < chars.len() {
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                set.extend(chars[i]..=chars[i + 2]);
                i += 3;
            } else {
                set.insert(chars[i]);
                i += 1;
            }
        }
        let rust: std::collections::BTreeSet<char> =
            ('\0'..=char::MAX).filter(|c| c.is_whitespace()).collect();
        assert_eq!(set, rust);
    }
}
