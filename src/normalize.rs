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
        out.push(c);
    }
    if out.bytes().any(|b| b >= 0xE0) {
        // Only strings with 3-byte characters (CJK lives there) can hold
        // traditional forms; skip the table look-ups for everything else.
        fast2s::replace(&mut out);
    }
    out
}

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
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), *want, "normalize({input:?})");
        }
    }
}
