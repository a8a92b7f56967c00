//! Close codes and close frame payloads (RFC 6455 sections 5.5.1 and 7.4).

use super::error::ProtocolError;

/// A close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// Never on the wire: "no status code was present".
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Never on the wire: "closed without a close frame".
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// IANA's registered 3000, "Unauthorized": the connection's token expired.
    pub const UNAUTHORIZED: CloseCode = CloseCode(3000);

    /// Whether a peer may send this code in a close frame.
    ///
    /// RFC 6455 7.4.1 defines 1000-1003 and 1007-1011; IANA's registry added 1012-1014. 1004,
    /// 1005, 1006 and 1015 are reserved or never sent; 1016-2999 are reserved for future RFCs;
    /// 3000-4999 belong to libraries and applications; everything else is out of range.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A received close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// `None` when the frame had an empty payload.
    pub code: Option<CloseCode>,
    pub reason: &'a str,
}

/// Parses and validates a close frame payload.
pub fn parse_close_payload(payload: &[u8]) -> Result<CloseFrame<'_>, ProtocolError> {
    match payload {
        [] => Ok(CloseFrame {
            code: None,
            reason: "",
        }),
        [_] => Err(ProtocolError::CloseFrameOneByte),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = core::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(CloseFrame {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Writes a close payload (code + reason cut to fit a control frame) into `out`; returns its length.
pub fn encode_close_payload(out: &mut [u8; 125], code: CloseCode, reason: &str) -> usize {
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_validity_table() {
        let table: &[(u16, bool)] = &[
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2000, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
            (65535, false),
        ];
        for &(code, ok) in table {
            assert_eq!(CloseCode(code).is_sendable(), ok, "code {code}");
        }
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(parse_close_payload(&[]).unwrap().code, None);
        assert_eq!(
            parse_close_payload(&[3]),
            Err(ProtocolError::CloseFrameOneByte)
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, b'o', b'k'])
                .unwrap()
                .reason,
            "ok"
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xff]),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn reason_is_cut_on_a_char_boundary() {
        let mut buf = [0u8; 125];
        let reason = "é".repeat(100);
        let n = encode_close_payload(&mut buf, CloseCode::NORMAL, &reason);
        assert!(n <= 125);
        assert!(core::str::from_utf8(&buf[2..n]).is_ok());
    }
}
