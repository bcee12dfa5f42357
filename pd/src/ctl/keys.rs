//! Keys as typed on the command line, and as put in a URL.

use super::{CtlResult, KeyFormat};

/// The bytes of `key` written in `format`.
pub fn parse(key: &str, format: KeyFormat) -> CtlResult<Vec<u8>> {
    match format {
        KeyFormat::Raw => Ok(key.as_bytes().to_vec()),
        KeyFormat::Hex => hex::decode(key).map_err(|e| format!("key {key:?} is not hex: {e}")),
        KeyFormat::Escaped => unescape(key),
    }
}

/// Reads C-style escapes: `\xNN`, `\n`, `\r`, `\t`, `\0`, `\\`, `\"`, `\'`;
/// other characters stand for their UTF-8 bytes.
pub fn unescape(key: &str) -> CtlResult<Vec<u8>> {
    let mut out = Vec::with_capacity(key.len());
    let mut bytes = key.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = bytes.next().ok_or_else(|| format!("key {key:?} ends inside an escape"))?;
        out.push(match e {
            b'x' => {
                let hi = bytes.next();
                let lo = bytes.next();
                let pair = [hi, lo].map(|d| d.map(char::from).unwrap_or(' '));
                let text: String = pair.iter().collect();
                u8::from_str_radix(&text, 16)
                    .map_err(|_| format!("key {key:?}: \\x{text} is not two hex digits"))?
            }
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'0' => 0,
            b'\\' | b'"' | b'\'' => e,
            other => return Err(format!("key {key:?}: unknown escape \\{}", char::from(other))),
        });
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &[u8]) -> String {
    s.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_key_forms_name_the_same_bytes() {
        let want = b"k\x00\n1".to_vec();
        assert_eq!(parse("6b000a31", KeyFormat::Hex).unwrap(), want);
        assert_eq!(parse("k\\x00\\n1", KeyFormat::Escaped).unwrap(), want);
        assert_eq!(parse("k1", KeyFormat::Raw).unwrap(), b"k1");
        assert_eq!(parse("a\\\\b", KeyFormat::Escaped).unwrap(), b"a\\b");
        assert!(parse("zz", KeyFormat::Hex).is_err());
        assert!(parse("k\\x0", KeyFormat::Escaped).is_err());
        assert!(parse("k\\q", KeyFormat::Escaped).is_err());
        assert_eq!(percent_encode(b"a b/c"), "a%20b%2Fc");
    }
}
