//! A report as an aligned terminal table or as CSV.

use std::fmt::Write;

use unicode_width::UnicodeWidthStr;

use super::{Figures, GroupBy, Report};

/// The CSV columns after `by,key`: the JSON field names.
const FIELDS: [&str; 14] = [
    "rounds",
    "answered",
    "first_response_avg_s",
    "response_avg_s",
    "response_p50_s",
    "response_p90_s",
    "within_30s_rate",
    "within_3min_rate",
    "breaches",
    "ratings",
    "ratings_excluded",
    "satisfaction_rate",
    "suggestion_use_rate",
    "gold_medal_eligible",
];

/// Short table headings, in the order of [`FIELDS`].
const HEADINGS: [&str; 14] = [
    "rounds",
    "answered",
    "first s",
    "avg s",
    "p50 s",
    "p90 s",
    "≤30s",
    "≤3min",
    "breaches",
    "ratings",
    "excluded",
    "satisfied",
    "sugg use",
    "gold",
];

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.1}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn table_cells(f: &Figures) -> [String; 14] {
    [
        f.rounds.to_string(),
        f.answered.to_string(),
        secs(f.first_response_avg_s),
        secs(f.response_avg_s),
        secs(f.response_p50_s),
        secs(f.response_p90_s),
        pct(f.within_30s_rate),
        pct(f.within_3min_rate),
        f.breaches.to_string(),
        f.ratings.to_string(),
        f.ratings_excluded.to_string(),
        pct(f.satisfaction_rate),
        pct(f.suggestion_use_rate),
        if f.gold_medal_eligible { "yes" } else { "no" }.into(),
    ]
}

/// Pads to a display width: Chinese characters take two columns.
fn pad(out: &mut String, s: &str, width: usize, right: bool) {
    let fill = width.saturating_sub(s.width());
    if right {
        out.push_str(&" ".repeat(fill));
        out.push_str(s);
    } else {
        out.push_str(s);
        out.push_str(&" ".repeat(fill));
    }
}

/// Aligned columns for a terminal: one row per group, then the total.
pub fn to_table(report: &Report, by: Option<GroupBy>) -> String {
    let mut rows: Vec<(String, [String; 14])> = Vec::new();
    for g in report.groups.iter().flatten() {
        rows.push((g.key.clone(), table_cells(&g.figures)));
    }
    let groups = rows.len();
    rows.push(("total".into(), table_cells(&report.total)));
    let first = by.map_or("", GroupBy::as_str);
    let mut widths = [0usize; 15];
    widths[0] = rows
        .iter()
        .map(|r| r.0.width())
        .max()
        .unwrap_or(0)
        .max(first.width());
    for (c, h) in HEADINGS.iter().enumerate() {
        widths[c + 1] = rows
            .iter()
            .map(|r| r.1[c].width())
            .max()
            .unwrap_or(0)
            .max(h.width());
    }
    let mut out = String::new();
    let line = |out: &mut String, key: &str, cells: &[&str]| {
        pad(out, key, widths[0], false);
        for (c, cell) in cells.iter().enumerate() {
            out.push_str("  ");
            pad(out, cell, widths[c + 1], true);
        }
        out.push('\n');
    };
    line(&mut out, first, &HEADINGS);
    let rule: usize = widths.iter().sum::<usize>() + 2 * HEADINGS.len();
    for (n, (key, cells)) in rows.iter().enumerate() {
        if n == groups && groups > 0 {
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        line(&mut out, key, &cells);
    }
    out
}

/// A text cell for a spreadsheet. One that starts like a formula (`=`, `+`,
/// `-`, `@`, tab or carriage return) gets a leading `'`, so an agent or
/// shop named `=HYPERLINK(...)` is shown as text, not run (found by
/// review). Figures never start so: they are not negative.
fn csv_field(out: &mut String, s: &str) {
    let guarded;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv_row(out: &mut String, by: &str, key: &str, f: &Figures) {
    let num = |v: Option<f64>| v.map_or_else(String::new, |x| x.to_string());
    csv_field(out, by);
    out.push(',');
    csv_field(out, key);
    let cells = [
        f.rounds.to_string(),
        f.answered.to_string(),
        num(f.first_response_avg_s),
        num(f.response_avg_s),
        num(f.response_p50_s),
        num(f.response_p90_s),
        num(f.within_30s_rate),
        num(f.within_3min_rate),
        f.breaches.to_string(),
        f.ratings.to_string(),
        f.ratings_excluded.to_string(),
        num(f.satisfaction_rate),
        num(f.suggestion_use_rate),
        f.gold_medal_eligible.to_string(),
    ];
    for c in cells {
        out.push(',');
        out.push_str(&c);
    }
    out.push('\n');
}

/// CSV with a header row: `by,key,` and the JSON field names; the total is
/// the first row (`by` = `total`, empty key), then one row per group with
/// `by` naming the grouping. Empty cells are the JSON's nulls.
pub fn to_csv(report: &Report, by: Option<GroupBy>) -> String {
    let mut out = String::from("by,key");
    for f in FIELDS {
        let _ = write!(out, ",{f}");
    }
    out.push('\n');
    csv_row(&mut out, "total", "", &report.total);
    let by = by.map_or("", GroupBy::as_str);
    for g in report.groups.iter().flatten() {
        csv_row(&mut out, by, &g.key, &g.figures);
    }
    out
}

#[cfg(test)]
mod tests {
    /// (key, cell): quoting and formula guard of a text cell.
    #[test]
    fn csv_text_cells() {
        let cases = [
            ("a1", "a1"),
            ("小美", "小美"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "\"'\rx\""),
            ("a=b", "a=b"),
            ("", ""),
        ];
        for (key, want) in cases {
            let mut out = String::new();
            super::csv_field(&mut out, key);
            assert_eq!(out, want, "{key:?}");
        }
    }
}
