//! Indents JSON text for people without parsing its values, so what the server stores byte for
//! byte is printed as stored: numbers of any size and precision, key order and repeated keys.
//! (Printing through `serde_json::Value` rounded `123456789012345678901234567890` to
//! `1.2345678901234568e29` and sorted the keys.)

/// `json` (valid JSON text) indented as `serde_json::to_string_pretty` would indent it, with
/// every string, number and literal copied as it is.
pub fn pretty(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                let mut escaped = false;
                for c in chars.by_ref() {
                    out.push(c);
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                if let Some(close) = chars.next_if(|&next| matches!(next, '}' | ']')) {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_copied_as_they_are_and_indented_as_serde_json_does() {
        let stored = r#"{"b":1, "a":123456789012345678901234567890,"a":1.50,"s":"x,{\"y\":[]}","e":[],"o":{ },"l":[true,null]}"#;
        assert_eq!(
            pretty(stored),
            "{\n  \"b\": 1,\n  \"a\": 123456789012345678901234567890,\n  \"a\": 1.50,\n  \
             \"s\": \"x,{\\\"y\\\":[]}\",\n  \"e\": [],\n  \"o\": {},\n  \"l\": [\n    true,\n    \
             null\n  ]\n}"
        );
        let plain = serde_json::json!({"k": [1, {"n": "v"}], "z": {}});
        assert_eq!(
            pretty(&plain.to_string()),
            serde_json::to_string_pretty(&plain).unwrap()
        );
    }
}
