//! The summary: a prefix of a text cut at a sentence end.

/// Characters that end a sentence.
const TERMINATORS: [char; 8] = ['。', '！', '？', '!', '?', '.', '；', ';'];

/// Closing quotes and brackets that belong to the sentence they follow (`他说：“好。”`).
const CLOSERS: [char; 11] = ['”', '’', '"', '\'', '」', '』', '）', ')', '》', '】', '〕'];

/// The longest prefix of `text` of at most `max_chars` characters (Unicode scalar values) that
/// ends at a sentence end, with surrounding whitespace trimmed.
///
/// A sentence ends after one of `。！？!?.；;` together with any closing quotes or brackets
/// right after it (`”’"'」』）)》】〕`), and before a newline. An ASCII `.` followed by an
/// ASCII letter or digit (`3.14`, `example.com`) is not a sentence end. The end of the text is
/// one: a text that fits is returned whole.
///
/// When no sentence end fits, the text is cut after `max_chars` characters and nothing (no
/// ellipsis) is appended, so the result is always a slice of `text`.
///
/// ```
/// use migrate_worker::keywords::summarize;
///
/// assert_eq!(summarize("第一句。第二句很长很长。", 8), "第一句。");
/// assert_eq!(summarize("  没有句号的文字  ", 3), "没有句");
/// ```
#[must_use]
pub fn summarize(text: &str, max_chars: usize) -> &str {
    let text = text.trim_start();
    let mut best = 0;
    let mut after_terminator = false;
    for (count, (i, c)) in text.char_indices().enumerate() {
        if count == max_chars {
            let cut = if best == 0 { i } else { best };
            return text[..cut].trim_end();
        }
        let end = i + c.len_utf8();
        if c == '\n' {
            best = i;
            after_terminator = false;
        } else if TERMINATORS.contains(&c) {
            let decimal_point = c == '.'
                && text[end..]
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_ascii_alphanumeric());
            if decimal_point {
                after_terminator = false;
            } else {
                best = end;
                after_terminator = true;
            }
        } else if after_terminator && CLOSERS.contains(&c) {
            best = end;
        } else {
            after_terminator = false;
        }
    }
    text.trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table locks in where a summary is cut.
    #[test]
    fn summaries_end_at_the_last_sentence_end_that_fits() {
        let cases: &[(&str, usize, &str)] = &[
            // The last sentence end within the limit wins.
            ("今天天气很好。我们去公园！你去吗？", 10, "今天天气很好。"),
            (
                "今天天气很好。我们去公园！你去吗？",
                13,
                "今天天气很好。我们去公园！",
            ),
            (
                "今天天气很好。我们去公园！你去吗？",
                17,
                "今天天气很好。我们去公园！你去吗？",
            ),
            (
                "今天天气很好。我们去公园！你去吗？",
                16,
                "今天天气很好。我们去公园！",
            ),
            ("Is it? Yes. No", 12, "Is it? Yes."),
            ("Is it? Yes. No", 7, "Is it?"),
            ("一；二;三", 4, "一；二;"),
            // Closing quotes stay with their sentence.
            ("他说：“好。”然后走了。", 8, "他说：“好。”"),
            ("他说：“好。”然后走了。", 6, "他说：“好。"),
            ("「走吧！」她说", 6, "「走吧！」"),
            // A newline ends a sentence too.
            ("标题没有句号\n正文第一句。正文", 10, "标题没有句号"),
            // No sentence end fits: cut at the limit, nothing appended.
            ("没有任何标点的一段很长的文字", 5, "没有任何标"),
            ("abcdef", 3, "abc"),
            // Decimal points and domain names are not sentence ends.
            ("价格是3.5元。很便宜", 9, "价格是3.5元。"),
            ("Go to example.com now. Bye", 24, "Go to example.com now."),
            ("Go to example.com now. Bye", 15, "Go to example.c"),
            ("pi is 3.14 ok", 9, "pi is 3.1"),
            // Whitespace is trimmed, and leading whitespace does not count.
            ("   前面有空格。后面  ", 7, "前面有空格。"),
            ("  短文本  ", 100, "短文本"),
            ("", 10, ""),
            ("任何文字", 0, ""),
            ("句子。   ", 3, "句子。"),
        ];
        for (text, max, want) in cases {
            assert_eq!(summarize(text, *max), *want, "summarize({text:?}, {max})");
        }
    }

    #[test]
    fn a_summary_never_exceeds_its_character_limit() {
        let text = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。";
        for max in 0..=text.chars().count() + 2 {
            assert!(summarize(text, max).chars().count() <= max, "limit {max}");
        }
    }
}
