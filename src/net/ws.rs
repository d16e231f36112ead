//! WebSocket close codes for read errors, shared by every WebSocket the
//! relay runs (client connections and the replication link).

/// The close frame RFC 6455 asks for after a read error: 1007 for a text
/// message that is not UTF-8, 1009 for a message beyond the hard size limit.
/// Looks through the error's sources for tungstenite's error, so it serves
/// axum's socket and the tungstenite client alike.
pub fn close_for_error(err: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let mut e = Some(err);
    while let Some(cur) = e {
        match cur.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Utf8(_)) => {
                return Some((1007, "invalid UTF-8 in a text message"))
            }
            Some(tungstenite::Error::Capacity(_)) => return Some((1009, "message too big")),
            Some(_) => return None,
            None => e = cur.source(),
        }
    }
    None
}
